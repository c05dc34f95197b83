//! The peer table: what this node knows of every other, and the rules of the mesh, with
//! no sockets and no clock (the driver passes `now`).
//!
//! Call order, per peer session (the driver is `super::mesh`):
//! 1. [`PeerTable::on_session`] once the peer has proved the secret and said hello: the
//!    table answers [`Verdict::Accept`] (the new session is the peer's live one; a
//!    session it replaces is handed back to be closed) or [`Verdict::Duplicate`] (close
//!    the new one). Of two sessions between the same pair, the one dialed by the lower
//!    node id is kept, on both sides, so both sides keep the same one.
//! 2. [`PeerTable::heard_from`] on every message; [`PeerTable::on_rtt`] on each heartbeat
//!    answer.
//! 3. [`PeerTable::on_session_end`] when the session's reader stops.
//!
//! And on a timer, [`PeerTable::tick`]: peers silent for the node timeout lose their
//! session (they are down: the driver forgets their interest), the others get a
//! heartbeat.
//!
//! [`PeerTable::in_majority`] is what readiness needs; [`PeerTable::dial`] and
//! [`PeerTable::should_dial_peer`] what the dialers need.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use switchboard_proto::peer::NodeId;

/// A session's handle, as the driver keeps it: whatever lets it send to the peer.
pub trait Link: Clone {
    /// Whether the session can still carry messages (its writer is alive).
    fn is_open(&self) -> bool;
}

/// What a peer gave in its hello: its addresses, and the version it runs.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PeerAddrs {
    pub peer: String,
    pub ws: String,
    pub resp: String,
    pub admin: String,
    pub version: String,
}

/// One member as the admin API shows it.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct MemberView {
    pub id: NodeId,
    /// The incarnation (data dir id) its last session presented.
    pub incarnation: u64,
    /// Its boot id (changes at every restart of the process).
    pub boot: u64,
    pub up: bool,
    /// It announced that it drains: history is handed over from it before it leaves.
    pub leaving: bool,
    /// Its WebSocket connections and groups, as its last heartbeat said.
    pub connections: u64,
    pub groups: u64,
    pub last_seen_ms: u64,
    pub rtt_micros: u64,
    pub peer: String,
    pub ws: String,
    pub resp: String,
    pub admin: String,
    pub version: String,
}

#[derive(Debug, Clone)]
struct Session<S> {
    id: u64,
    /// The node that dialed this connection.
    dialer: NodeId,
    link: S,
}

#[derive(Debug, Clone)]
struct Peer<S> {
    addrs: PeerAddrs,
    incarnation: u64,
    boot: u64,
    last_seen: Instant,
    rtt_micros: u64,
    /// It announced a drain on its live session.
    leaving: bool,
    /// Its load, from its last heartbeat: (connections, groups).
    load: (u64, u64),
    session: Option<Session<S>>,
}

/// What a dialer of an address should do now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dial {
    /// Dial it: no live session has this address.
    Now,
    /// A live session has it: look again later.
    Wait,
    /// Every member it was dialed for is up at another address now (one restarted with a
    /// new `--peer-advertise`), and no member has this one: stop dialing it.
    Stop,
}

/// What to do with a new session.
#[derive(Debug, PartialEq, Eq)]
pub enum Verdict<S> {
    /// It is the peer's live session now, under this id; close `replaced` if any.
    Accept { session: u64, replaced: Option<S> },
    /// The peer already has a live session that wins: close this one.
    Duplicate,
}

/// What a [`PeerTable::tick`] found.
#[derive(Debug, PartialEq, Eq)]
pub struct Tick<S> {
    /// Peers silent for the node timeout: now down, their session dropped (close it).
    pub expired: Vec<(NodeId, S)>,
    /// Live sessions to send a heartbeat on.
    pub heartbeat: Vec<S>,
}

/// See the module header.
#[derive(Debug)]
pub struct PeerTable<S> {
    me: NodeId,
    timeout: Duration,
    /// Started with seeds: until some peer is reached, this node is joining, not a
    /// cluster of one.
    joining: bool,
    peers: HashMap<NodeId, Peer<S>>,
    next_session: u64,
}

impl<S: Link> PeerTable<S> {
    /// The table of node `me`, whose peers are down after `timeout` of silence.
    pub fn new(me: NodeId, timeout: Duration, joining: bool) -> Self {
        PeerTable {
            me,
            timeout,
            joining,
            peers: HashMap::new(),
            next_session: 1,
        }
    }

    /// A peer finished its handshake on a session dialed by `dialer`. See the module
    /// header for the rule.
    pub fn on_session(
        &mut self,
        now: Instant,
        peer: NodeId,
        (addrs, incarnation, boot): (PeerAddrs, u64, u64),
        dialer: NodeId,
        link: S,
    ) -> Verdict<S> {
        let entry = self.peers.entry(peer).or_insert_with(|| Peer {
            addrs: addrs.clone(),
            incarnation,
            boot,
            last_seen: now,
            rtt_micros: 0,
            leaving: false,
            load: (0, 0),
            session: None,
        });
        if let Some(existing) = &entry.session
            && existing.link.is_open()
            && existing.dialer <= dialer
        {
            return Verdict::Duplicate;
        }
        let session = self.next_session;
        self.next_session += 1;
        entry.addrs = addrs;
        entry.incarnation = incarnation;
        entry.boot = boot;
        entry.last_seen = now;
        entry.leaving = false;
        let replaced = entry
            .session
            .replace(Session {
                id: session,
                dialer,
                link,
            })
            .map(|s| s.link);
        Verdict::Accept { session, replaced }
    }

    /// The session `session` of `peer` ended. Returns true when it was the live one (the
    /// peer is down now); false for a session already replaced or expired.
    pub fn on_session_end(&mut self, peer: NodeId, session: u64) -> bool {
        match self.peers.get_mut(&peer) {
            Some(p) if p.session.as_ref().is_some_and(|s| s.id == session) => {
                p.session = None;
                true
            }
            _ => false,
        }
    }

    /// A message arrived from `peer`.
    pub fn heard_from(&mut self, now: Instant, peer: NodeId) {
        if let Some(p) = self.peers.get_mut(&peer) {
            p.last_seen = now;
        }
    }

    /// `peer` announced on its live session that it drains (a new session clears it).
    pub fn on_leaving(&mut self, peer: NodeId) {
        if let Some(p) = self.peers.get_mut(&peer) {
            p.leaving = true;
        }
    }

    /// `peer`'s heartbeat said how many connections and groups it has.
    pub fn on_load(&mut self, peer: NodeId, connections: u64, groups: u64) {
        if let Some(p) = self.peers.get_mut(&peer) {
            p.load = (connections, groups);
        }
    }

    /// A heartbeat answer measured this round-trip time.
    pub fn on_rtt(&mut self, peer: NodeId, rtt_micros: u64) {
        if let Some(p) = self.peers.get_mut(&peer) {
            p.rtt_micros = rtt_micros;
        }
    }

    /// Expires silent peers and lists the sessions to heartbeat.
    pub fn tick(&mut self, now: Instant) -> Tick<S> {
        let mut tick = Tick {
            expired: Vec::new(),
            heartbeat: Vec::new(),
        };
        for (id, p) in &mut self.peers {
            let silent = now.saturating_duration_since(p.last_seen) >= self.timeout;
            match p.session.take() {
                Some(s) if silent => tick.expired.push((*id, s.link)),
                Some(s) => {
                    tick.heartbeat.push(s.link.clone());
                    p.session = Some(s);
                }
                None => {}
            }
        }
        tick.expired.sort_by_key(|(id, _)| *id);
        tick
    }

    /// Whether this node is in touch with a majority of the members it knows, itself
    /// included. A node started with seeds that has reached no peer yet is still
    /// joining (not in a majority); one that knows no peer and had no seeds is a cluster
    /// of one.
    pub fn in_majority(&self) -> bool {
        if self.peers.is_empty() {
            return !self.joining;
        }
        let up = 1 + self.peers.values().filter(|p| p.session.is_some()).count();
        let known = 1 + self.peers.len();
        2 * up > known
    }

    /// The live session of `peer`.
    pub fn link(&self, peer: NodeId) -> Option<&S> {
        self.peers
            .get(&peer)?
            .session
            .as_ref()
            .map(|session| &session.link)
    }

    /// Every live session, with its peer.
    pub fn links(&self) -> impl Iterator<Item = (NodeId, &S)> {
        self.peers
            .iter()
            .filter_map(|(id, p)| p.session.as_ref().map(|s| (*id, &s.link)))
    }

    /// Whether `peer` has a live session.
    pub fn is_up(&self, peer: NodeId) -> bool {
        self.link(peer).is_some()
    }

    /// What a dialer of `addr` should do now; `members` are the nodes it was asked to
    /// dial there, as a peer or the Raft log named them (`None` for a seed: a seed is
    /// dialed whatever happens, the operator named it).
    pub fn dial(&self, addr: &str, members: &[Option<NodeId>]) -> Dial {
        let mut here = self
            .peers
            .values()
            .filter(|p| p.addrs.peer == addr)
            .peekable();
        let taken = here.peek().is_some();
        if here.any(|p| p.session.is_some()) {
            return Dial::Wait;
        }
        // Up at another address: that one is its address now. (Down, the address it was
        // last known at may be the stale one: a peer may name its new one first.)
        let moved = |member: &Option<NodeId>| {
            member
                .and_then(|id| self.peers.get(&id))
                .is_some_and(|p| p.session.is_some() && p.addrs.peer != addr)
        };
        if !members.is_empty() && members.iter().all(moved) && !taken {
            Dial::Stop
        } else {
            Dial::Now
        }
    }

    /// Whether this node should dial `peer`, learnt from another's member list: of two
    /// nodes, the lower id dials (the higher waits to be dialed), and only when they are
    /// not connected.
    pub fn should_dial_peer(&self, peer: NodeId) -> bool {
        self.me < peer && !self.is_up(peer)
    }

    /// How long ago `peer` was last heard from, if ever.
    pub fn last_seen(&self, now: Instant, peer: NodeId) -> Option<Duration> {
        self.peers
            .get(&peer)
            .map(|p| now.saturating_duration_since(p.last_seen))
    }

    /// Every peer this node has heard of, by id.
    pub fn members(&self, now: Instant) -> Vec<MemberView> {
        let mut members: Vec<MemberView> = self
            .peers
            .iter()
            .map(|(id, p)| MemberView {
                id: *id,
                incarnation: p.incarnation,
                boot: p.boot,
                // Down is decided in one place, `tick`, which also has the driver drop
                // the peer's interest: members, presence and routing never disagree.
                up: p.session.is_some(),
                leaving: p.leaving && p.session.is_some(),
                connections: p.load.0,
                groups: p.load.1,
                last_seen_ms: now.saturating_duration_since(p.last_seen).as_millis() as u64,
                rtt_micros: p.rtt_micros,
                peer: p.addrs.peer.clone(),
                ws: p.addrs.ws.clone(),
                resp: p.addrs.resp.clone(),
                admin: p.addrs.admin.clone(),
                version: p.addrs.version.clone(),
            })
            .collect();
        members.sort_by_key(|m| m.id);
        members
    }

    /// Every peer's id and peer address, for the member lists nodes exchange.
    pub fn known(&self) -> Vec<(NodeId, String)> {
        let mut known: Vec<(NodeId, String)> = self
            .peers
            .iter()
            .map(|(id, p)| (*id, p.addrs.peer.clone()))
            .collect();
        known.sort();
        known
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::Cell;
    use std::rc::Rc;

    /// A link whose openness the test controls.
    #[derive(Debug, Clone)]
    struct FakeLink {
        name: &'static str,
        open: Rc<Cell<bool>>,
    }

    impl PartialEq for FakeLink {
        fn eq(&self, other: &Self) -> bool {
            self.name == other.name
        }
    }
    impl Eq for FakeLink {}

    impl Link for FakeLink {
        fn is_open(&self) -> bool {
            self.open.get()
        }
    }

    fn link(name: &'static str) -> FakeLink {
        FakeLink {
            name,
            open: Rc::new(Cell::new(true)),
        }
    }

    fn addrs(port: u16) -> PeerAddrs {
        PeerAddrs {
            peer: format!("127.0.0.1:{port}"),
            ..PeerAddrs::default()
        }
    }

    const TIMEOUT: Duration = Duration::from_secs(5);

    #[test]
    fn of_two_sessions_the_one_dialed_by_the_lower_id_is_kept() {
        // Node 2 and node 3 dial each other at once. Seen from node 2:
        let t0 = Instant::now();
        let mut table = PeerTable::new(2, TIMEOUT, false);
        // The session node 3 dialed arrives first and is accepted...
        let first = table.on_session(t0, 3, (addrs(7003), 0, 0), 3, link("dialed by 3"));
        assert!(matches!(first, Verdict::Accept { replaced: None, .. }));
        // ...then the one node 2 dialed replaces it (2 < 3), and hands it back to close.
        let second = table.on_session(t0, 3, (addrs(7003), 0, 0), 2, link("dialed by 2"));
        assert!(matches!(
            second,
            Verdict::Accept { replaced: Some(ref l), .. } if l.name == "dialed by 3"
        ));
        assert_eq!(table.link(3).map(|l| l.name), Some("dialed by 2"));
        // A late third session dialed by 3 loses to the kept one.
        assert_eq!(
            table.on_session(t0, 3, (addrs(7003), 0, 0), 3, link("late")),
            Verdict::Duplicate
        );
        assert_eq!(table.link(3).map(|l| l.name), Some("dialed by 2"));
    }

    #[test]
    fn a_drain_announced_holds_for_that_session_only() {
        let t0 = Instant::now();
        let mut table = PeerTable::new(1, TIMEOUT, false);
        let Verdict::Accept { session, .. } =
            table.on_session(t0, 2, (addrs(7002), 0, 10), 1, link("first"))
        else {
            panic!("accepted");
        };
        assert!(!table.members(t0)[0].leaving);
        table.on_leaving(2);
        assert!(
            table.members(t0)[0].leaving,
            "announced on the live session"
        );
        assert!(table.on_session_end(2, session));
        assert!(
            !table.members(t0)[0].leaving,
            "a peer that is down is not leaving"
        );
        // The same id comes back (a restart): not leaving any more.
        table.on_session(t0, 2, (addrs(7002), 0, 11), 1, link("second"));
        assert!(!table.members(t0)[0].leaving);
        table.on_leaving(9);
        assert_eq!(table.members(t0).len(), 1, "an unknown peer is not added");
    }

    #[test]
    fn a_session_whose_writer_died_is_replaced_even_by_a_higher_dialer() {
        let t0 = Instant::now();
        let mut table = PeerTable::new(2, TIMEOUT, false);
        let dead = link("dead");
        table.on_session(t0, 3, (addrs(7003), 0, 0), 2, dead.clone());
        dead.open.set(false);
        let verdict = table.on_session(t0, 3, (addrs(7003), 0, 0), 3, link("fresh"));
        assert!(matches!(
            verdict,
            Verdict::Accept {
                replaced: Some(_),
                ..
            }
        ));
        assert_eq!(table.link(3).map(|l| l.name), Some("fresh"));
    }

    #[test]
    fn only_the_live_session_ending_takes_the_peer_down() {
        let t0 = Instant::now();
        let mut table = PeerTable::new(1, TIMEOUT, false);
        let Verdict::Accept { session: old, .. } =
            table.on_session(t0, 2, (addrs(7002), 0, 0), 2, link("old"))
        else {
            panic!("accepted");
        };
        let Verdict::Accept { session: new, .. } =
            table.on_session(t0, 2, (addrs(7002), 0, 0), 1, link("new"))
        else {
            panic!("accepted");
        };
        assert!(!table.on_session_end(2, old), "a replaced session ending");
        assert!(table.is_up(2));
        assert!(table.on_session_end(2, new));
        assert!(!table.is_up(2));
        assert!(!table.on_session_end(2, new), "ending twice");
    }

    #[test]
    fn a_silent_peer_expires_after_the_timeout_and_the_others_get_heartbeats() {
        let t0 = Instant::now();
        let mut table = PeerTable::new(1, TIMEOUT, false);
        table.on_session(t0, 2, (addrs(7002), 0, 0), 1, link("two"));
        table.on_session(t0, 3, (addrs(7003), 0, 0), 1, link("three"));
        let later = t0 + Duration::from_secs(3);
        table.heard_from(later, 3);
        let tick = table.tick(t0 + Duration::from_millis(4_999));
        assert!(tick.expired.is_empty(), "not yet");
        assert_eq!(tick.heartbeat.len(), 2);
        let tick = table.tick(t0 + TIMEOUT);
        assert_eq!(
            tick.expired.iter().map(|(id, _)| *id).collect::<Vec<_>>(),
            vec![2]
        );
        assert_eq!(
            tick.heartbeat.iter().map(|l| l.name).collect::<Vec<_>>(),
            vec!["three"]
        );
        assert!(!table.is_up(2));
        assert!(table.is_up(3));
        let members = table.members(t0 + TIMEOUT);
        assert_eq!(
            members.iter().map(|m| (m.id, m.up)).collect::<Vec<_>>(),
            vec![(2, false), (3, true)]
        );
        assert_eq!(members[0].last_seen_ms, 5_000);
        // The expired peer's session is gone: ending it now changes nothing.
        assert_eq!(table.tick(t0 + TIMEOUT * 2).expired.len(), 1, "node 3 now");
    }

    #[test]
    fn majority_counts_this_node_and_every_known_peer() {
        let t0 = Instant::now();
        let alone = PeerTable::<FakeLink>::new(1, TIMEOUT, false);
        assert!(alone.in_majority(), "a cluster of one");
        let joining = PeerTable::<FakeLink>::new(1, TIMEOUT, true);
        assert!(!joining.in_majority(), "started with seeds, reached nobody");

        let mut table = PeerTable::new(1, TIMEOUT, true);
        table.on_session(t0, 2, (addrs(7002), 0, 0), 1, link("two"));
        table.on_session(t0, 3, (addrs(7003), 0, 0), 1, link("three"));
        assert!(table.in_majority(), "3 of 3");
        table.tick(t0 + TIMEOUT - Duration::from_millis(1));
        table.heard_from(t0 + TIMEOUT, 2);
        table.tick(t0 + TIMEOUT);
        assert!(table.in_majority(), "2 of 3");
        table.tick(t0 + TIMEOUT * 2);
        assert!(!table.in_majority(), "1 of 3");
    }

    #[test]
    fn dialing_rules() {
        let t0 = Instant::now();
        let mut table = PeerTable::new(2, TIMEOUT, false);
        assert_eq!(table.dial("127.0.0.1:7003", &[Some(3)]), Dial::Now);
        assert!(table.should_dial_peer(3), "the lower id dials");
        assert!(!table.should_dial_peer(1), "the higher waits to be dialed");
        table.on_session(t0, 3, (addrs(7003), 0, 0), 2, link("three"));
        assert_eq!(
            table.dial("127.0.0.1:7003", &[None]),
            Dial::Wait,
            "connected"
        );
        assert!(!table.should_dial_peer(3), "connected");
        assert_eq!(table.known(), vec![(3, "127.0.0.1:7003".to_string())]);
        assert_eq!(
            table.last_seen(t0 + Duration::from_secs(1), 3),
            Some(Duration::from_secs(1))
        );
    }

    #[test]
    fn a_member_back_on_another_address_is_no_longer_dialed_at_the_old_one() {
        let t0 = Instant::now();
        let mut table = PeerTable::new(1, TIMEOUT, false);
        let old = "127.0.0.1:7003";
        let three = link("three");
        table.on_session(t0, 3, (addrs(7003), 0, 0), 1, three.clone());
        three.open.set(false);
        table.tick(t0 + TIMEOUT);
        assert_eq!(
            table.dial(old, &[Some(3)]),
            Dial::Now,
            "down, not moved: dial on"
        );
        let new = "127.0.0.1:7013";
        assert_eq!(
            table.dial(new, &[Some(3)]),
            Dial::Now,
            "its new address, named by a peer before it connected here: dial"
        );
        // Node 3 comes back on another port.
        table.on_session(t0 + TIMEOUT, 3, (addrs(7013), 0, 1), 3, link("three again"));
        assert_eq!(table.dial(old, &[Some(3)]), Dial::Stop);
        assert_eq!(
            table.dial(old, &[Some(3), Some(4)]),
            Dial::Now,
            "also asked for node 4, not heard of yet: dial"
        );
        assert_eq!(
            table.dial(old, &[None]),
            Dial::Now,
            "a seed is dialed regardless"
        );
        assert_eq!(table.dial(new, &[Some(3)]), Dial::Wait);
        assert_eq!(
            table.dial("127.0.0.1:7004", &[Some(4)]),
            Dial::Now,
            "never heard of: dial"
        );
        // Node 4 starts on the old address: dialing it makes sense again.
        let four = link("four");
        table.on_session(t0 + TIMEOUT, 4, (addrs(7003), 0, 0), 1, four.clone());
        assert_eq!(table.dial(old, &[Some(3)]), Dial::Wait);
        four.open.set(false);
        table.tick(t0 + TIMEOUT * 3);
        assert_eq!(table.dial(old, &[Some(3)]), Dial::Now, "node 4's, down");
    }
}
