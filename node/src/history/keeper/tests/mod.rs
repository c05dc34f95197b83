//! The keeper with no sockets and no clock: three keepers joined by a simulated network
//! whose messages the test delivers, loses or refuses, over assignments the test commits
//! (to every node, or only to some: a node that has not applied a change yet).

mod sim;

use switchboard_proto::peer::Position;

use super::*;
use crate::history::assign::Change;
use crate::history::{BUCKETS, Rule, Rules};
use sim::*;

#[test]
fn a_publish_is_delivered_and_answered_only_once_its_replica_holds_it() {
    let mut sim = Sim::new();
    let (owner, replica, other) = sim.roles();
    // The replica's acknowledgements are lost: nothing is delivered, nobody answered.
    sim.cut.insert((replica, owner));
    let t = sim.publish(other, id(1), 0, "a");
    assert!(sim.delivered.is_empty() && sim.outcome(other, t).is_none());
    assert_eq!(sim.keepers[&owner].stats().pending, 1);
    // The link heals; the unacknowledged entry has the group's history sent again, whose
    // acknowledgement confirms it.
    sim.cut.clear();
    sim.tick(SYNC_RETRY);
    sim.tick(TICK);
    assert_eq!(sim.deliveries(), vec![pos(FIRST_EPOCH, 1)]);
    assert_eq!(sim.delivered[0].0, owner, "the owner fans out");
    assert_eq!(sim.position(other, t), pos(FIRST_EPOCH, 1));
    assert_eq!(sim.keepers[&owner].stats().pending, 0);
    assert_eq!(sim.keepers[&replica].stats().messages, 1);
    assert_eq!(sim.keepers[&other].stats().messages, 0);
}

#[test]
fn an_owner_whose_epoch_was_replaced_gets_nothing_acknowledged() {
    let mut sim = Sim::new();
    let (owner, replica, other) = sim.roles();
    // The replica takes over (the owner seemed down); the old owner has not applied it.
    let takeover = sim.plan(replica, &[replica, other]);
    let epoch = sim.commit(&takeover, &[replica, other]);
    assert_eq!(
        sim.maps[&replica].of_group(GROUP).map(|a| a.owner),
        Some(replica)
    );
    sim.tick(TICK);
    let t = sim.publish(owner, id(1), 0, "stale");
    sim.tick(SYNC_RETRY);
    sim.tick(ACK_PATIENCE);
    assert!(sim.delivered.is_empty(), "fenced: never delivered");
    assert_eq!(sim.outcome(owner, t), Some(&Err(HistoryError::Unconfirmed)));
    // The old owner applies the change; the retry goes to the new owner, which never
    // held the message and takes it once.
    sim.apply(owner, &takeover, epoch);
    sim.tick(TICK);
    let t = sim.publish(owner, id(1), 1, "stale");
    assert_eq!(sim.position(owner, t), pos(epoch, 1));
    assert_eq!(sim.deliveries(), vec![pos(epoch, 1)]);
}

#[test]
fn a_retry_after_a_lost_answer_gets_the_same_position_and_is_not_delivered_again() {
    let mut sim = Sim::new();
    let (owner, _, other) = sim.roles();
    sim.cut.insert((owner, other));
    let t = sim.publish(other, id(1), 0, "a");
    assert_eq!(sim.deliveries(), vec![pos(FIRST_EPOCH, 1)]);
    sim.tick(REQUEST_TIMEOUT);
    let error = sim.error(other, t);
    assert_eq!(error, HistoryError::Timeout);
    assert!(error.may_have_landed() && error.is_retryable());
    sim.cut.clear();
    let t = sim.publish(other, id(1), 1, "a");
    assert_eq!(sim.position(other, t), pos(FIRST_EPOCH, 1));
    assert_eq!(sim.deliveries().len(), 1, "not delivered again");
    assert_eq!(sim.keepers[&owner].stats().messages, 1, "not stored again");
    // A first attempt is never matched against earlier ids: another publish.
    let t = sim.publish(other, id(2), 0, "b");
    assert_eq!(sim.position(other, t), pos(FIRST_EPOCH, 2));
}

#[test]
fn a_message_the_replica_stored_outlives_its_owner_and_its_retry_is_taken_once() {
    let mut sim = Sim::new();
    let (owner, replica, other) = sim.roles();
    // The replica stores the message; the owner dies before the acknowledgement.
    sim.cut.insert((replica, owner));
    let t = sim.publish(other, id(1), 0, "a");
    sim.dead.insert(owner);
    sim.tick(REQUEST_TIMEOUT);
    assert_eq!(sim.outcome(other, t), Some(&Err(HistoryError::Timeout)));
    // The replica takes over, continuing the epoch; the publisher asks again.
    let taken_over = (0..BUCKETS)
        .filter(|b| {
            sim.maps[&replica]
                .get(*b)
                .is_some_and(|a| a.owner == owner && a.replica == Some(replica))
        })
        .count() as u64;
    assert!(taken_over > 0);
    let takeover = sim.plan(replica, &[replica, other]);
    let epoch = sim.commit(&takeover, &[replica, other]);
    sim.tick(TICK);
    let counts = sim
        .keepers
        .get_mut(&replica)
        .expect("replica")
        .take_counts();
    assert_eq!(
        counts.takeovers, taken_over,
        "every bucket it replicated for the dead owner"
    );
    let t = sim.publish(other, id(1), 1, "a");
    assert_eq!(
        sim.position(other, t),
        pos(FIRST_EPOCH, 1),
        "its first position"
    );
    assert_eq!(sim.keepers[&replica].stats().messages, 1, "held once");
    // The next publish continues the offsets, and a recovery sees both once.
    let t = sim.publish(other, id(2), 0, "b");
    assert_eq!(sim.position(other, t), pos(epoch, 2));
    let r = sim.recover(other, Some(pos(FIRST_EPOCH, 0)));
    let r = sim.recovery(other, r);
    assert!(r.recovered);
    let got: Vec<Position> = r.entries.iter().map(|e| e.position).collect();
    assert_eq!(got, vec![pos(FIRST_EPOCH, 1), pos(epoch, 2)]);
    assert_eq!((r.epoch, r.top), (epoch, 2));
}

#[test]
fn publishers_waiting_on_a_slow_replica_are_told_unconfirmed_and_a_retry_waits_for_the_same_entry()
{
    let mut sim = Sim::new();
    let (owner, replica, _) = sim.roles();
    sim.cut.insert((owner, replica));
    let first = sim.publish(owner, id(1), 0, "a");
    sim.tick(ACK_PATIENCE);
    let error = sim.error(owner, first);
    assert_eq!(error, HistoryError::Unconfirmed);
    assert!(error.may_have_landed() && error.is_retryable());
    let retry = sim.publish(owner, id(1), 1, "a");
    assert!(
        sim.outcome(owner, retry).is_none(),
        "waits for the same entry"
    );
    sim.cut.clear();
    sim.tick(SYNC_RETRY);
    sim.tick(TICK);
    assert_eq!(sim.position(owner, retry), pos(FIRST_EPOCH, 1));
    assert_eq!(
        sim.deliveries(),
        vec![pos(FIRST_EPOCH, 1)],
        "delivered once"
    );
}

#[test]
fn a_draining_owner_takes_nothing_new_and_confirms_what_it_took() {
    let mut sim = Sim::new();
    let (owner, replica, other) = sim.roles();
    sim.cut.insert((replica, owner));
    let taken = sim.publish(other, id(1), 0, "a");
    sim.keepers.get_mut(&owner).expect("owner").handle_leaving();
    let refused = sim.publish(other, id(2), 0, "b");
    let error = sim.error(other, refused);
    assert_eq!(error, HistoryError::HandingOver(owner));
    assert!(!error.may_have_landed() && error.is_retryable());
    sim.cut.clear();
    sim.tick(SYNC_RETRY);
    sim.tick(TICK);
    assert_eq!(sim.position(other, taken), pos(FIRST_EPOCH, 1));
    assert_eq!(
        sim.keepers[&owner].stats().pending,
        0,
        "nothing left to hand over"
    );
}

#[test]
fn an_owner_that_loses_its_bucket_tells_waiting_publishers_at_once() {
    let mut sim = Sim::new();
    let (owner, replica, other) = sim.roles();
    sim.cut.insert((owner, replica));
    let t = sim.publish(other, id(1), 0, "a");
    let takeover = sim.plan(replica, &[replica, other]);
    sim.commit(&takeover, &[owner, replica, other]);
    sim.tick(TICK);
    assert_eq!(sim.outcome(other, t), Some(&Err(HistoryError::Unconfirmed)));
    assert!(sim.delivered.is_empty());
}

#[test]
fn refusals_that_took_nothing_come_back_at_once_and_say_so() {
    let mut sim = Sim::new();
    let (owner, _, other) = sim.roles();
    sim.unreachable.insert(owner);
    let t = sim.publish(other, id(1), 0, "a");
    let error = sim.error(other, t);
    assert_eq!(error, HistoryError::OwnerUnreachable(owner));
    assert!(!error.may_have_landed());
    sim.unreachable.clear();
    sim.cut_off.insert(owner);
    let t = sim.publish(other, id(2), 0, "a");
    assert_eq!(sim.outcome(other, t), Some(&Err(HistoryError::CutOff)));
    sim.cut_off.clear();
    let huge = "x".repeat(MAX_HISTORY_MESSAGE + 1);
    let t = sim.publish(owner, id(3), 0, &huge);
    let error = sim.error(owner, t);
    assert!(matches!(error, HistoryError::TooLarge(_)) && !error.is_retryable());
    // From a node that is not the owner: refused there, never sent.
    let t = sim.publish(other, id(4), 0, &huge);
    assert!(matches!(sim.error(other, t), HistoryError::TooLarge(_)));
    assert!(sim.net.is_empty());
    assert!(sim.delivered.is_empty());
    assert_eq!(sim.keepers[&owner].stats().messages, 0);
}

#[test]
fn a_long_recovery_comes_in_pages_from_a_remote_owner() {
    let mut sim = Sim::new();
    let (owner, _, other) = sim.roles();
    let big = "m".repeat(READ_PAGE / 3 + 1);
    for seq in 1..=5 {
        sim.publish(owner, id(seq), 0, &big);
    }
    assert_eq!(sim.deliveries().len(), 5);
    // Each ask is one page (two messages of at most READ_PAGE bytes); the reader asks
    // again after the last it got.
    let mut since = pos(FIRST_EPOCH, 0);
    let mut pages = Vec::new();
    for _ in 0..5 {
        let t = sim.recover(other, Some(since));
        let r = sim.recovery(other, t).clone();
        assert!(r.recovered);
        assert_eq!((r.epoch, r.top), (FIRST_EPOCH, 5));
        pages.push(
            r.entries
                .iter()
                .map(|e| e.position.offset)
                .collect::<Vec<_>>(),
        );
        match r.entries.last() {
            Some(last) if r.more => since = last.position,
            _ => break,
        }
    }
    assert_eq!(pages, vec![vec![1, 2], vec![3, 4], vec![5]]);
    assert_eq!(sim.reads, 3);
    // A position from another history is not recovered, and nothing is replayed.
    let t = sim.recover(other, Some(pos(FIRST_EPOCH - 1, 3)));
    let r = sim.recovery(other, t);
    assert!(!r.recovered && r.entries.is_empty());
    assert_eq!((r.epoch, r.top), (FIRST_EPOCH, 5));
}

#[test]
fn a_recovery_storm_waits_for_read_slots_and_one_read_answers_every_ask_of_its_page() {
    let mut sim = Sim::new();
    let (owner, _, other) = sim.roles();
    for seq in 1..=3 {
        sim.publish(owner, id(seq), 0, "m");
    }
    // Every slot the owner may hold taken by a read of its own (positions it never
    // minted).
    let busy: Vec<Ticket> = (0..MAX_READS_PER_OWNER as u64)
        .map(|k| sim.ask(other, Some(pos(FIRST_EPOCH, 100 + k))))
        .collect();
    assert_eq!(sim.reads, MAX_READS_PER_OWNER);
    // A storm of asks for one page, and one for another page: they wait, unsent.
    let storm: Vec<Ticket> = (0..100)
        .map(|_| sim.ask(other, Some(pos(FIRST_EPOCH, 0))))
        .collect();
    let apart = sim.ask(other, Some(pos(FIRST_EPOCH, 2)));
    assert_eq!(sim.reads, MAX_READS_PER_OWNER, "queued, not sent");
    assert!(
        storm
            .iter()
            .all(|t| !sim.recovered.contains_key(&(other, *t)))
    );
    sim.deliver();
    for t in busy {
        assert!(!sim.recovery(other, t).recovered);
    }
    assert_eq!(
        sim.reads,
        MAX_READS_PER_OWNER + 2,
        "one read for the storm's page, one for the other"
    );
    for t in storm {
        let r = sim.recovery(other, t);
        assert!(r.recovered);
        let offsets: Vec<u64> = r.entries.iter().map(|e| e.position.offset).collect();
        assert_eq!(offsets, vec![1, 2, 3]);
    }
    let offsets: Vec<u64> = sim
        .recovery(other, apart)
        .entries
        .iter()
        .map(|e| e.position.offset)
        .collect();
    assert_eq!(offsets, vec![3]);
    // An ask made after a read of its page left is not merged into it (the owner may
    // have read before the asker subscribed): it gets a read of its own.
    let first = sim.ask(other, Some(pos(FIRST_EPOCH, 0)));
    let second = sim.ask(other, Some(pos(FIRST_EPOCH, 0)));
    assert_eq!(sim.reads, MAX_READS_PER_OWNER + 4);
    sim.deliver();
    assert!(sim.recovery(other, first).recovered && sim.recovery(other, second).recovered);
}

#[test]
fn a_silent_owner_holds_half_the_read_slots_at_most_and_its_asks_time_out_in_turn() {
    let mut sim = Sim::new();
    let (owner, replica, other) = sim.roles();
    // A group the replica owns: its asks must not wait behind the silent owner's.
    let elsewhere = (1..500)
        .map(|u| format!("user_{u}"))
        .find(|g| sim.maps[&other].of_group(g).map(|a| a.owner) == Some(replica))
        .expect("a group owned by the replica");
    sim.dead.insert(owner);
    let stuck: Vec<Ticket> = (0..MAX_READS_IN_FLIGHT as u64)
        .map(|k| sim.ask(other, Some(pos(FIRST_EPOCH, k))))
        .collect();
    assert_eq!(sim.reads, MAX_READS_PER_OWNER, "half the slots, not all");
    let ticket = sim.ticket();
    let group = elsewhere.clone();
    sim.call(other, |k, facts| {
        k.handle_recover(facts, ticket, group, Some(pos(FIRST_EPOCH, 0)))
    });
    sim.deliver();
    assert!(
        sim.recovery(other, ticket).recovered,
        "served at once by its own owner"
    );
    // The silent owner's asks time out a slot-load at a time, none forgotten.
    sim.tick(REQUEST_TIMEOUT);
    let failed = |sim: &Sim| {
        stuck
            .iter()
            .filter(|t| sim.recovered.get(&(other, **t)) == Some(&Err(HistoryError::Timeout)))
            .count()
    };
    assert_eq!(failed(&sim), MAX_READS_PER_OWNER);
    sim.tick(REQUEST_TIMEOUT);
    assert_eq!(failed(&sim), MAX_READS_IN_FLIGHT);
}

#[test]
fn a_recovery_asked_of_an_unreachable_owner_fails_and_one_of_a_dead_owner_times_out() {
    let mut sim = Sim::new();
    let (owner, _, other) = sim.roles();
    sim.unreachable.insert(owner);
    let t = sim.recover(other, Some(pos(FIRST_EPOCH, 0)));
    assert_eq!(
        sim.recovered.get(&(other, t)),
        Some(&Err(HistoryError::OwnerUnreachable(owner)))
    );
    sim.unreachable.clear();
    sim.dead.insert(owner);
    let t = sim.recover(other, Some(pos(FIRST_EPOCH, 0)));
    assert!(!sim.recovered.contains_key(&(other, t)));
    sim.tick(REQUEST_TIMEOUT);
    assert_eq!(
        sim.recovered.get(&(other, t)),
        Some(&Err(HistoryError::Timeout))
    );
}

#[test]
fn a_replica_that_lost_its_copy_is_sent_the_history_and_the_next_entry_follows() {
    let mut sim = Sim::new();
    let (owner, replica, other) = sim.roles();
    sim.publish(owner, id(1), 0, "a");
    // The replica restarts: a new keeper with a new boot; the owner keeps the bucket
    // with the restarted replica in a continuing epoch.
    let rules = Rules::new(vec![Rule {
        pattern: "user_*".into(),
        size: 100,
        ttl: None,
    }]);
    sim.keepers.insert(
        replica,
        Keeper::new(replica, boot(replica) + 1, rules, 1 << 30),
    );
    let mut live: BTreeMap<NodeId, u64> = [owner, replica, other]
        .into_iter()
        .map(|n| (n, boot(n)))
        .collect();
    live.insert(replica, boot(replica) + 1);
    let changes = sim.maps[&owner].plan(&live, |_| true);
    let epoch = sim.commit(&changes, &[owner, replica, other]);
    sim.tick(TICK);
    assert_eq!(
        sim.keepers[&replica].stats().messages,
        1,
        "the history was sent"
    );
    let t = sim.publish(other, id(2), 0, "b");
    assert_eq!(sim.position(other, t), pos(epoch, 2));
    assert_eq!(sim.keepers[&replica].stats().messages, 2);
    assert_eq!(sim.deliveries(), vec![pos(FIRST_EPOCH, 1), pos(epoch, 2)]);
}

#[test]
fn an_owner_handing_over_to_a_replica_that_dies_keeps_the_history_as_the_new_replica() {
    // Found by the README tour: a planned hand-over (a node joining) made the old owner
    // the replica of an epoch continuing its own; the new owner died before sending it
    // anything; the old owner, taking over again, held its copy under the old epoch and
    // started the history over.
    let mut sim = Sim::new();
    let (owner, replica, other) = sim.roles();
    let t = sim.publish(other, id(1), 0, "a");
    assert_eq!(sim.position(other, t), pos(FIRST_EPOCH, 1));
    let bucket = bucket_of(GROUP);
    sim.dead.insert(replica);
    let handover = Change {
        bucket,
        owner: replica,
        owner_boot: boot(replica),
        replica: Some(owner),
        replica_boot: boot(owner),
        continues: Some(FIRST_EPOCH),
    };
    let handed = sim.commit(&[handover], &[owner, other]);
    sim.tick(TICK);
    // The new owner is noticed dead: the old owner, its replica, takes over.
    let takeover = sim.plan(owner, &[owner, other]);
    let a = takeover
        .iter()
        .find(|c| c.bucket == bucket)
        .expect("the bucket moves");
    assert_eq!((a.owner, a.continues), (owner, Some(handed)));
    let epoch = sim.commit(&takeover, &[owner, other]);
    sim.tick(TICK);
    let t = sim.publish(other, id(2), 0, "b");
    assert_eq!(sim.position(other, t), pos(epoch, 2), "the offsets go on");
    let r = sim.recover(other, Some(pos(FIRST_EPOCH, 0)));
    let r = sim.recovery(other, r);
    assert!(r.recovered);
    let got: Vec<Position> = r.entries.iter().map(|e| e.position).collect();
    assert_eq!(got, vec![pos(FIRST_EPOCH, 1), pos(epoch, 2)]);
}
