"""The console under /admin: one blueprint per area, and the SVG charts its pages draw."""

from mailer.web.admin import (
    console,
    feeds,
    hooks,
    issues,
    looks,
    newsletters,
    schedules,
    sending,
    settings,
    subscribers,
    users,
)

# console first: its blueprint owns /admin itself (login, dashboard, outbox).
BLUEPRINTS = (
    console.bp, schedules.bp, issues.bp, sending.bp, subscribers.bp, users.bp, settings.bp,
    feeds.bp, hooks.bp, newsletters.bp, looks.bp,
)
