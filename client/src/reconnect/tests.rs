use super::*;

#[test]
fn backoff_grows_and_is_capped() {
    let b = Backoff::default();
    assert_eq!(b.delay(0, 1.0), Duration::from_millis(100));
    assert_eq!(b.delay(3, 1.0), Duration::from_millis(800));
    assert_eq!(b.delay(30, 1.0), Duration::from_secs(10));
    assert_eq!(b.delay(0, 0.0), Duration::from_millis(50));
    assert_eq!(
        b.delay(0, 7.0),
        Duration::from_millis(100),
        "jitter clamped"
    );
}

#[test]
fn jitter_is_spread_and_differs_between_clients() {
    let mut a = ReconnectingClient::new(vec![], ConnectOptions::default(), Backoff::default());
    let mut b = ReconnectingClient::new(vec![], ConnectOptions::default(), Backoff::default());
    let xs: Vec<f64> = (0..1000).map(|_| a.jitter()).collect();
    assert!(xs.iter().all(|x| (0.0..1.0).contains(x)));
    let mean = xs.iter().sum::<f64>() / xs.len() as f64;
    assert!((0.4..0.6).contains(&mean), "mean {mean}");
    assert_ne!(a.jitter(), b.jitter());
}

#[test]
fn a_refusal_is_final_and_other_closes_grow_the_backoff() {
    let mut c = ReconnectingClient::new(
        vec!["ws://a/".into()],
        ConnectOptions::default(),
        Backoff::default(),
    );
    assert_eq!(c.dropped(1012, "draining".into()), None);
    assert_eq!(c.attempt, 1, "a connection that never became stable");
    assert_eq!(c.dropped(1013, "full".into()), None);
    assert_eq!(c.attempt, 2);
    c.connected_at = Some(Instant::now() - STABLE_AFTER);
    assert_eq!(c.dropped(1012, "draining".into()), None);
    assert_eq!(c.attempt, 0, "a stable connection resets the backoff");
    assert_eq!(c.last_close(), Some((1012, "draining")));
    assert_eq!(
        c.dropped(4003, "origin".into()),
        Some(Event::Refused {
            code: 4003,
            reason: "origin".into()
        })
    );
    assert!(c.stopped);
}

#[test]
fn ops_are_tracked_for_replay() {
    let mut c = ReconnectingClient::new(vec![], ConnectOptions::default(), Backoff::default());
    let sub = |g: &str| ClientOp::Subscribe {
        group: g.into(),
        since: None,
        id: None,
    };
    c.track(&sub("a"));
    c.track(&sub("b"));
    c.track(&sub("a"));
    assert_eq!(c.subscriptions(), ["a", "b"]);
    c.track(&ClientOp::Unsubscribe {
        group: "a".into(),
        id: None,
    });
    assert_eq!(c.subscriptions(), ["b"]);
    c.track(&ClientOp::Refresh {
        token: "new".into(),
        id: None,
    });
    assert_eq!(c.options.token.as_deref(), Some("new"));
}
