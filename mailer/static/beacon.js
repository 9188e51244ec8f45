/*
 * The mailer's page-view beacon: counts a reader's visit to an article for the "most
 * popular" section of the digest. Put it in the site's article template only:
 *
 *   <script async src="https://NEWSLETTER-HOST/static/beacon.js"></script>
 *
 * It posts the page's canonical address (<link rel="canonical">, else the address bar) to
 * https://NEWSLETTER-HOST/api/v1/pageviews once the page is visible, with
 * navigator.sendBeacon and a form-encoded body, which needs no CORS preflight. Add the
 * site's origin to MAILER_CORS_ORIGINS so the fetch() fallback may read the answer.
 *
 * Sends no cookies and stores nothing in the browser. The mailer counts each reader once
 * per article per day from a daily keyed hash of IP address and browser; it never keeps the
 * IP address. Pre-rendered pages, automated browsers and bots are not counted.
 */
(function () {
  "use strict";
  var script = document.currentScript;
  if (!script || navigator.webdriver) return;
  var endpoint = new URL("/api/v1/pageviews", script.src).href;

  function pageUrl() {
    var canonical = document.querySelector('link[rel="canonical"]');
    return (canonical && canonical.href) || location.href.split("#")[0];
  }

  function send() {
    var body = new URLSearchParams({ url: pageUrl() });
    if (navigator.sendBeacon && navigator.sendBeacon(endpoint, body)) return;
    fetch(endpoint, { method: "POST", body: body, keepalive: true, credentials: "omit",
                      mode: "cors" }).catch(function () {});
  }

  // A page opened in a background tab or pre-rendered is counted when the reader sees it.
  if (document.visibilityState === "visible") {
    send();
  } else {
    document.addEventListener("visibilitychange", function onVisible() {
      if (document.visibilityState !== "visible") return;
      document.removeEventListener("visibilitychange", onVisible);
      send();
    });
  }
})();
