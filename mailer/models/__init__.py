"""Typed SQLAlchemy 2.0 models; import from here."""

from mailer.models.articles import Article, ArticleStat, Feed, VisitorSeen
from mailer.models.bounces import BounceEvent, BounceKind, BounceReportCount
from mailer.models.hooks import HookCount, HookDelivery, HookEndpoint, HookEvent, HookStatus
from mailer.models.imports import SubscriberImport
from mailer.models.issues import (
    Click,
    Delivery,
    DeliveryStatus,
    Issue,
    IssueItem,
    IssueStatus,
    IssueVariant,
    ItemSection,
)
from mailer.models.newsletters import Newsletter, Subscription, SubscriptionStatus
from mailer.models.schedules import Schedule, ScheduleRun
from mailer.models.subscribers import (
    JOINED_KINDS,
    LEFT_KINDS,
    ConsentRecord,
    Frequency,
    Subscriber,
    SubscriberEvent,
    SubscriberStatus,
    Suppression,
    new_uid,
    sections_key,
    sections_list,
)
from mailer.models.users import ApiToken, LoginThrottle, Role, User
from mailer.models.webhooks import WebhookToken
from mailer.models.workers import HousekeepingTurn, WorkerHeartbeat

__all__ = [
    "ApiToken", "Article", "ArticleStat", "BounceEvent", "BounceKind", "BounceReportCount",
    "Click", "ConsentRecord",
    "Delivery", "DeliveryStatus", "Feed", "Frequency", "HookCount", "HookDelivery", "HookEndpoint",
    "HookEvent", "HookStatus", "HousekeepingTurn", "Issue", "IssueItem", "IssueStatus",
    "IssueVariant", "ItemSection", "JOINED_KINDS", "LEFT_KINDS", "LoginThrottle", "Newsletter", "Role",
    "Schedule", "ScheduleRun", "Subscriber", "SubscriberEvent", "SubscriberImport",
    "SubscriberStatus", "Subscription", "SubscriptionStatus", "Suppression",
    "User", "VisitorSeen", "WebhookToken", "WorkerHeartbeat", "new_uid", "sections_key", "sections_list",
]
