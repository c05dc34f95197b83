//! Tests of the broker core: no sockets, no clock.

use super::*;

fn broker() -> Broker<u64> {
    Broker::new(BrokerLimits {
        max_groups_per_connection: 4,
        max_group_name: 16,
    })
}

#[test]
fn a_connection_joins_its_user_group_and_its_token_groups() {
    let mut b = broker();
    let refused = b.connect(
        1,
        100,
        "42",
        "user_42",
        Permissions::new(["news", "room_*"], false),
    );
    assert!(refused.is_empty());
    assert_eq!(b.recipients("user_42"), &[100]);
    assert_eq!(b.recipients("news"), &[100]);
    assert_eq!(
        b.recipients("room_1"),
        &[] as &[u64],
        "patterns join nothing"
    );
    assert_eq!(b.groups_of(1), vec!["news", "user_42"]);
}

#[test]
fn subscribe_is_checked_against_the_token() {
    let mut b = broker();
    b.connect(1, 100, "42", "user_42", Permissions::new(["room_*"], false));
    assert_eq!(b.join(1, 100, "room_7"), Ok(()));
    assert_eq!(
        b.join(1, 100, "admin"),
        Err(JoinError::NotPermitted("admin".into()))
    );
    assert!(b.join(1, 100, "user_43").is_err());
    assert_eq!(b.recipients("room_7"), &[100]);
}

#[test]
fn group_limits_hold() {
    let mut b = broker();
    b.connect(1, 100, "1", "user_1", Permissions::new(["g*"], false));
    for g in ["g1", "g2", "g3"] {
        b.join(1, 100, g).expect("under the limit");
    }
    assert_eq!(b.join(1, 100, "g4"), Err(JoinError::TooManyGroups(4)));
    assert_eq!(
        b.join(1, 100, "g12345678901234567"),
        Err(JoinError::InvalidName(crate::names::NameError::TooLong(16)))
    );
    assert_eq!(
        b.join(1, 100, "g\r\n"),
        Err(JoinError::InvalidName(crate::names::NameError::Control))
    );
    // Joining a group twice changes nothing.
    assert_eq!(b.join(1, 100, "g1"), Ok(()));
    assert_eq!(b.group_size("g1"), 1);
}

#[test]
fn leaving_and_disconnecting_empty_the_groups() {
    let mut b = broker();
    b.connect(1, 100, "1", "user_1", Permissions::new(["news"], false));
    b.connect(2, 200, "2", "user_2", Permissions::new(["news"], false));
    b.connect(3, 300, "3", "user_3", Permissions::new(["news"], false));
    assert_eq!(b.group_size("news"), 3);
    b.leave(1, "news").expect("was subscribed");
    let mut left: Vec<u64> = b.recipients("news").to_vec();
    left.sort_unstable();
    assert_eq!(left, vec![200, 300]);
    assert_eq!(
        b.leave(1, "news"),
        Err(LeaveError::NotSubscribed("news".into()))
    );
    assert_eq!(
        b.leave(2, "user_2"),
        Err(LeaveError::OwnUserGroup("user_2".into()))
    );
    assert_eq!(b.disconnect(2).as_deref(), Some("2"));
    assert_eq!(b.recipients("news"), &[300]);
    assert_eq!(b.disconnect(3).as_deref(), Some("3"));
    assert_eq!(b.group_size("news"), 0);
    assert_eq!(b.group_count(), 1, "only user_1 is left");
    assert_eq!(b.disconnect(3), None);
}

#[test]
fn several_connections_of_one_user_share_the_user_group() {
    let mut b = broker();
    b.connect(1, 100, "7", "user_7", Permissions::default());
    b.connect(2, 200, "7", "user_7", Permissions::default());
    assert_eq!(b.group_size("user_7"), 2);
    b.disconnect(1);
    assert_eq!(b.recipients("user_7"), &[200]);
}

#[test]
fn interest_changes_are_collected_once_with_increasing_versions() {
    let mut b = broker();
    assert_eq!(b.take_interest_changes(), None);
    b.connect(1, 100, "1", "user_1", Permissions::new(["news"], false));
    let (v1, changes) = b.take_interest_changes().expect("changes");
    assert_eq!(
        changes,
        vec![("news".to_string(), 1), ("user_1".to_string(), 1)]
    );
    assert_eq!(b.take_interest_changes(), None);
    b.disconnect(1);
    let (v2, changes) = b.take_interest_changes().expect("changes");
    assert_eq!(v2, v1 + 1);
    assert_eq!(
        changes,
        vec![("news".to_string(), 0), ("user_1".to_string(), 0)]
    );
    let (v3, snapshot) = b.interest_snapshot();
    assert_eq!(v3, v2);
    assert!(snapshot.is_empty());
}

#[test]
fn groups_are_listed_with_patterns() {
    let mut b = broker();
    b.connect(
        1,
        100,
        "1",
        "user_1",
        Permissions::new(["news", "room_a"], false),
    );
    assert_eq!(b.groups(None), vec!["news", "room_a", "user_1"]);
    assert_eq!(b.groups(Some(b"room_*")), vec!["room_a"]);
}

#[test]
fn presence_queries_are_limited_to_the_caller_unless_permitted() {
    let mut b = broker();
    b.connect(1, 100, "1", "user_1", Permissions::default());
    b.connect(
        2,
        200,
        "2",
        "user_2",
        Permissions::new(Vec::<String>::new(), true),
    );
    assert!(b.may_query_presence(1, "1"));
    assert!(!b.may_query_presence(1, "2"));
    assert!(b.may_query_presence(2, "1"));
}

#[test]
fn swap_remove_keeps_the_index_consistent_under_churn() {
    let mut b = broker();
    let ids: Vec<u64> = (1..=50).collect();
    for &id in &ids {
        b.connect(id, id * 10, &id.to_string(), "all", Permissions::default());
    }
    for &id in ids.iter().filter(|id| *id % 3 == 0) {
        b.disconnect(id);
    }
    let mut left: Vec<u64> = b.recipients("all").to_vec();
    left.sort_unstable();
    let expected: Vec<u64> = ids
        .iter()
        .filter(|id| *id % 3 != 0)
        .map(|id| id * 10)
        .collect();
    assert_eq!(left, expected);
    for &id in ids.iter().filter(|id| *id % 3 != 0) {
        assert!(b.disconnect(id).is_some());
    }
    assert_eq!(b.group_size("all"), 0);
}

#[test]
fn a_refresh_leaves_the_groups_the_new_token_drops_and_joins_its_new_ones() {
    let mut b = broker();
    b.connect(
        1,
        100,
        "42",
        "user_42",
        Permissions::new(["news", "room_*"], false),
    );
    b.join(1, 100, "room_1").expect("permitted by room_*");
    let (left, joined) = b.refresh(1, 100, Permissions::new(["sport"], false));
    assert_eq!(left, vec!["news", "room_1"]);
    assert_eq!(joined, vec!["sport"]);
    assert_eq!(
        b.groups_of(1),
        vec!["sport", "user_42"],
        "the user group stays"
    );
    assert!(b.recipients("news").is_empty());
    assert_eq!(
        b.join(1, 100, "room_2"),
        Err(JoinError::NotPermitted("room_2".into()))
    );
    // Refreshing with the same permissions changes nothing.
    assert_eq!(
        b.refresh(1, 100, Permissions::new(["sport"], false)),
        (vec![], vec![])
    );
    let (version, changes) = b.take_interest_changes().expect("interest changed");
    assert!(version > 0);
    assert!(changes.contains(&("news".to_string(), 0)));
}

#[test]
fn a_group_keeps_its_members_exactly_across_the_index_threshold_both_ways() {
    let mut b = broker();
    let perms = || Permissions::new(["g"], false);
    // Grow past the index threshold one join at a time, checking each step.
    for id in 1..=20u64 {
        b.connect(id, id * 10, &id.to_string(), &format!("user_{id}"), perms());
        b.join(id, id * 10, "g").expect("permitted");
        b.join(id, id * 10, "g")
            .expect("joining twice is not an error");
        assert_eq!(b.group_size("g"), id as usize, "no duplicate at {id}");
    }
    // Shrink well below it, leaving from the middle and the ends.
    for id in [10u64, 1, 20, 5, 15, 2, 19, 3, 18, 4, 17, 6, 16, 7] {
        b.leave(id, "g").expect("a member");
        assert!(b.leave(id, "g").is_err(), "left once only");
    }
    let mut left: Vec<u64> = b.recipients("g").to_vec();
    left.sort_unstable();
    assert_eq!(left, vec![80, 90, 110, 120, 130, 140]);
    // Unindexed again: joining and leaving still find members.
    b.join(10, 100, "g").expect("rejoin");
    b.join(8, 80, "g").expect("already in");
    assert_eq!(b.group_size("g"), 7);
    for id in [8u64, 9, 10, 11, 12, 13, 14] {
        b.leave(id, "g").expect("a member");
    }
    assert_eq!(b.group_size("g"), 0);
}
