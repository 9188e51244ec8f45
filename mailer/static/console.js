/* The console's small enhancements. Every page works without them; they save reloads:
   live progress (polling a JSON endpoint), drag-and-drop and Alt+arrow reordering in the
   composer, focus kept across the composer's reloads, and a few form niceties. */
(function () {
  "use strict";

  function csrfToken() {
    var meta = document.querySelector('meta[name="csrf-token"]');
    return meta ? meta.content : "";
  }

  /* --- live progress: [data-poll] polls its URL and fills its [data-field]s -------------- */

  function apply(root, data) {
    var fields = data.fields || {};
    Object.keys(fields).forEach(function (name) {
      var value = fields[name];
      root.querySelectorAll('[data-field="' + name + '"]').forEach(function (el) {
        if (el.tagName === "PROGRESS") {
          el.value = value;
          el.textContent = value + "%";
        } else if (el.textContent !== String(value)) {
          el.textContent = value;
        }
      });
    });
    root.dataset.state = data.state;
    root.querySelectorAll("[data-show-when]").forEach(function (el) {
      el.hidden = el.dataset.showWhen.split(" ").indexOf(data.state) < 0;
    });
  }

  function poll(root) {
    var failures = 0;
    function tick() {
      fetch(root.dataset.poll, {
        headers: { Accept: "application/json" }, credentials: "same-origin", cache: "no-store"
      })
        .then(function (resp) {
          if (!resp.ok) { throw new Error("HTTP " + resp.status); }
          return resp.json();
        })
        .then(function (data) {
          failures = 0;
          apply(root, data);
          if (!data.final) { setTimeout(tick, 1000); }
        })
        .catch(function () {
          // Signed out, or the server restarts: keep trying for a while, then stop quietly.
          failures += 1;
          if (failures < 30) { setTimeout(tick, 2000); }
        });
    }
    if (!root.hasAttribute("data-final")) { tick(); }
  }

  /* --- the look editor: live preview at desktop and phone width ------------------------- */

  function lookPreview(form) {
    var frames = document.querySelectorAll(".look-previews iframe");
    var fields = ["masthead_title", "accent_color", "header_font", "footer_md", "logo_url"];
    var timer = null;
    var last = "";
    function refresh() {
      var query = new URLSearchParams();
      fields.forEach(function (name) {
        var el = form.elements[name];
        if (el) { query.set(name, el.value); }
      });
      var remove = form.elements.remove_logo;
      if (remove && remove.checked) { query.set("remove_logo", "1"); }
      var url = form.dataset.preview + "?" + query.toString();
      if (url === last) { return; }
      last = url;
      frames.forEach(function (frame) { frame.src = url; });
    }
    function soon() {
      clearTimeout(timer);
      timer = setTimeout(refresh, 300);
    }
    var picker = form.querySelector("input[type=color][data-sync]");
    var accent = picker ? form.elements[picker.dataset.sync] : null;
    if (picker && accent) {
      picker.addEventListener("input", function () { accent.value = picker.value; soon(); });
      accent.addEventListener("input", function () {
        if (/^#[0-9a-fA-F]{6}$/.test(accent.value)) { picker.value = accent.value.toLowerCase(); }
      });
    }
    // The contrast against white, as the server computes it (WCAG 2.x), said as it is typed.
    var contrast = form.querySelector("[data-contrast]") || document.querySelector("[data-contrast]");
    function channel(v) {
      var c = v / 255;
      return c <= 0.03928 ? c / 12.92 : Math.pow((c + 0.055) / 1.055, 2.4);
    }
    function sayContrast() {
      if (!contrast || !accent) { return; }
      var hex = accent.value.trim();
      if (!/^#[0-9a-fA-F]{6}$/.test(hex)) { contrast.textContent = ""; return; }
      var rgb = [1, 3, 5].map(function (i) { return channel(parseInt(hex.substr(i, 2), 16)); });
      var lum = 0.2126 * rgb[0] + 0.7152 * rgb[1] + 0.0722 * rgb[2];
      var ratio = Math.floor(1.05 / (lum + 0.05) * 10) / 10;
      contrast.textContent = "; this one has " + ratio.toFixed(1) + ":1" +
        (1.05 / (lum + 0.05) < 4.5 ? ", too light: it would be refused" : "");
    }
    if (accent) {
      accent.addEventListener("input", sayContrast);
      if (picker) { picker.addEventListener("input", sayContrast); }
    }
    form.addEventListener("input", soon);
    form.addEventListener("change", soon);
    // With the script, the preview button updates both frames in place.
    var button = document.getElementById("look-refresh");
    if (button) {
      button.addEventListener("click", function (event) { event.preventDefault(); refresh(); });
    }
  }

  /* --- composer: drag-and-drop between and within the two sections ---------------------- */

  var dragged = null;

  function itemsOf(list) {
    return Array.prototype.slice.call(list.querySelectorAll("li[data-item]"));
  }

  function saveMove(li, list) {
    var body = new URLSearchParams();
    body.set("csrf_token", csrfToken());
    body.set("position", String(itemsOf(list).indexOf(li)));
    body.set("section", list.dataset.section);
    sessionStorage.setItem("console-focus", li.id);
    fetch(li.dataset.moveUrl, {
      method: "POST", body: body, credentials: "same-origin",
      headers: { Accept: "application/json" }
    }).then(function () { window.location.reload(); },
            function () { window.location.reload(); });
  }

  function sortable(list) {
    itemsOf(list).forEach(function (li) {
      li.draggable = true;
      li.addEventListener("dragstart", function (event) {
        dragged = li;
        li.classList.add("dragging");
        event.dataTransfer.effectAllowed = "move";
        event.dataTransfer.setData("text/plain", li.dataset.item);
      });
      li.addEventListener("dragend", function () {
        li.classList.remove("dragging");
      });
      // Alt+Up / Alt+Down anywhere on an item presses its arrow button.
      li.addEventListener("keydown", function (event) {
        if (!event.altKey) { return; }
        var action = event.key === "ArrowUp" ? "up" : event.key === "ArrowDown" ? "down" : "";
        var button = action && li.querySelector('button[data-action="' + action + '"]');
        if (button && !button.disabled) {
          event.preventDefault();
          button.click();
        }
      });
    });
    list.addEventListener("dragover", function (event) {
      if (!dragged) { return; }
      event.preventDefault();
      var after = null;
      itemsOf(list).some(function (li) {
        if (li === dragged) { return false; }
        var box = li.getBoundingClientRect();
        if (event.clientY < box.top + box.height / 2) { after = li; return true; }
        return false;
      });
      if (after) { list.insertBefore(dragged, after); } else { list.appendChild(dragged); }
    });
    list.addEventListener("drop", function (event) {
      if (!dragged) { return; }
      event.preventDefault();
      var li = dragged;
      dragged = null;
      saveMove(li, list);
    });
  }

  /* --- keep the keyboard focus on the button pressed, across the reload it causes ------- */

  function rememberFocus(form) {
    var button = form.querySelector("button[data-action]");
    var li = form.closest("li[data-item]");
    if (button && li) {
      sessionStorage.setItem("console-focus", li.id + " " + button.dataset.action);
    }
  }

  function restoreFocus() {
    var saved = sessionStorage.getItem("console-focus");
    if (!saved) { return; }
    sessionStorage.removeItem("console-focus");
    var parts = saved.split(" ");
    var li = document.getElementById(parts[0]);
    if (!li) { return; }
    var button = parts[1] && li.querySelector('button[data-action="' + parts[1] + '"]');
    if (!button || button.disabled) { button = li.querySelector("button:not([disabled])"); }
    if (!button) { return; }
    button.focus();
    // The browser's jump to the #item-… anchor can come after this and clear the focus (the
    // item itself cannot take it): for a moment, put it back when nothing else has it.
    var until = Date.now() + 1500;
    button.addEventListener("blur", function again() {
      setTimeout(function () {
        if (Date.now() < until && (document.activeElement === document.body ||
                                   document.activeElement === null)) {
          button.focus();
        } else {
          button.removeEventListener("blur", again);
        }
      }, 0);
    });
  }

  document.addEventListener("DOMContentLoaded", function () {
    document.querySelectorAll("[data-poll]").forEach(poll);
    document.querySelectorAll("ol[data-sortable]").forEach(sortable);
    document.querySelectorAll("li[data-item] form").forEach(function (form) {
      form.addEventListener("submit", function () { rememberFocus(form); });
    });
    // After the load: the browser's own jump to the #item-… anchor would take the focus away.
    window.addEventListener("load", function () { setTimeout(restoreFocus, 0); });
    // A send is one click: the server refuses a second start anyway, this just says so early.
    document.querySelectorAll("form[data-once]").forEach(function (form) {
      form.addEventListener("submit", function () {
        var button = form.querySelector("button[type=submit]");
        if (button) { setTimeout(function () { button.disabled = true; }, 0); }
      });
    });
    // The look editor: both previews follow the fields as the editor types.
    document.querySelectorAll("form[data-preview]").forEach(lookPreview);
    // The send-at form suggests the browser's own time zone.
    document.querySelectorAll("input[data-local-zone]").forEach(function (input) {
      try {
        var zone = Intl.DateTimeFormat().resolvedOptions().timeZone;
        if (zone && input.value === "UTC") { input.value = zone; }
      } catch (e) { /* old browsers keep UTC */ }
    });
  });
}());
