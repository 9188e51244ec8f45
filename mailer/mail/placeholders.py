"""The per-reader placeholders a rendered issue variant carries.

A digest is rendered once per variant (issues: services/digests); the delivery engine then
patches each reader's values into the ready-made MIME bytes (mail/personalize). These
markers are the whole contract between the two. They are plain ASCII without '=', so they
pass through quoted-printable encoding unchanged, and they cannot come from content: the
renderer neutralizes any occurrence of the prefix in article or editor text.
"""

PREFIX = "%%MLR_"

NAME = "%%MLR_NAME%%"  # the reader's name, or a neutral greeting word when none is known
EMAIL = "%%MLR_EMAIL%%"  # the reader's address
UNSUBSCRIBE_URL = "%%MLR_UNSUBSCRIBE_URL%%"  # /unsubscribe/<token>
PREFERENCES_URL = "%%MLR_PREFERENCES_URL%%"  # /preferences/<token>
# Base of the tracked links: an item's link is CLICK_BASE + "/" + str(item_id), expanding to
# <base>/t/<delivery token>/<item id>. Absent when MAILER_TRACKING=off (plain URLs instead).
CLICK_BASE = "%%MLR_CLICK_BASE%%"
OPEN_PIXEL_URL = "%%MLR_OPEN_URL%%"  # only present when MAILER_OPEN_PIXEL=on

ALL = (NAME, EMAIL, UNSUBSCRIBE_URL, PREFERENCES_URL, CLICK_BASE, OPEN_PIXEL_URL)

# A confirmation's link (mail.notices): its text and HTML are encoded once per newsletter
# look and list of newsletters, and each reader's link patched in. Not a digest's.
CONFIRM_URL = "%%MLR_CONFIRM_URL%%"


def neutralize(text: str) -> str:
    """Make content that happens to contain the marker prefix inert (before rendering)."""
    return text.replace(PREFIX, "%%\u200bMLR_") if PREFIX in text else text
