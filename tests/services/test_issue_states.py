"""The table of issue states, walked: every allowed change works, every other is refused."""

from __future__ import annotations

import pytest
from sqlalchemy import select

from mailer.db import db
from mailer.errors import InvalidTransition, NotFound
from mailer.models import Delivery, DeliveryStatus, Issue, IssueStatus
from mailer.services import issue_states as states
from tests.mail.delivery_support import add_readers, new_issue


@pytest.fixture
def session(app):
    with app.app_context():
        yield db.session


def issue_in(session, state: IssueStatus) -> int:
    issue = Issue(subject="A state", status=state)
    session.add(issue)
    session.commit()
    return issue.id


@pytest.mark.parametrize("change", states.TRANSITIONS, ids=lambda t: t.name)
def test_each_change_is_made_from_its_sources_and_refused_from_every_other_state(session, change):
    for state in IssueStatus:
        issue_id = issue_in(session, state)
        if state in change.sources:
            assert states.transition(session, issue_id, change, status_reason="why") is True
            session.commit()
            session.expire_all()
            issue = session.get(Issue, issue_id)
            assert (issue.status, issue.status_reason) == (change.target, "why")
        else:
            with pytest.raises(InvalidTransition) as refused:
                states.transition(session, issue_id, change)
            allowed = ", ".join(sorted(str(s) for s in change.sources))
            assert str(refused.value) == (
                f"Issue {issue_id} must be {allowed} to become {change.target}"
            )
            session.rollback()
            assert session.get(Issue, issue_id).status == state  # nothing changed


def test_an_unknown_issue_is_not_found(session):
    with pytest.raises(NotFound, match="There is no issue 424242"):
        states.transition(session, 424242, states.CANCEL)


def test_a_condition_holds_a_change_back_without_an_error(session):
    add_readers(1)
    issue_id = new_issue()
    states.transition(session, issue_id, states.START)
    delivery = Delivery(issue_id=issue_id, subscriber_id=1, status=DeliveryStatus.PENDING,
                        attempts=0)
    session.add(delivery)
    session.commit()
    nothing_left = ~select(Delivery.id).where(
        Delivery.issue_id == issue_id, Delivery.status == DeliveryStatus.PENDING
    ).exists()
    assert states.transition(session, issue_id, states.FINISH, when=nothing_left) is False
    delivery.status = DeliveryStatus.SENT
    session.commit()
    assert states.transition(session, issue_id, states.FINISH, when=nothing_left) is True
    # Not in a source state: held back too, never an error.
    assert states.transition(session, issue_id, states.FINISH, when=nothing_left) is False


def test_editing_is_allowed_exactly_while_an_issue_could_be_started():
    assert states.EDITABLE == states.START.sources == (IssueStatus.DRAFT, IssueStatus.SCHEDULED)
