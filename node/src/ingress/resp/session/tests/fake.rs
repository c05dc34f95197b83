//! A publisher that records what is published, for the RESP command layer's tests.

use std::collections::BTreeMap;
use std::sync::Mutex;

use bytes::Bytes;
use switchboard_proto::peer::NodeId;
use switchboard_proto::peer::{ConnAction, ConnTarget};

use crate::cluster::ActError;
use crate::history::HistoryError;
use crate::router::{Acted, PatternError, Publish, Routed};

/// Records what is published; groups have the subscriber counts the test sets.
#[derive(Debug, Default)]
pub(super) struct FakePublisher {
    pub(super) published: Mutex<Vec<(String, Bytes)>>,
    /// Acts asked; each reaches one connection.
    pub(super) acts: Mutex<Vec<(ConnTarget, ConnAction)>>,
    pub(super) subscribers: BTreeMap<String, usize>,
}

impl FakePublisher {
    pub(super) fn with(groups: &[(&str, usize)]) -> Self {
        FakePublisher {
            subscribers: groups.iter().map(|(g, n)| (g.to_string(), *n)).collect(),
            ..FakePublisher::default()
        }
    }

    pub(super) fn published(&self) -> Vec<(String, Bytes)> {
        self.published.lock().expect("not poisoned").clone()
    }
}

impl Publish for FakePublisher {
    fn act(
        &self,
        target: ConnTarget,
        action: ConnAction,
    ) -> futures_util::future::BoxFuture<'_, Result<Acted, ActError>> {
        self.acts
            .lock()
            .expect("not poisoned")
            .push((target, action));
        Box::pin(std::future::ready(Ok(Acted {
            reached: 1,
            silent: Vec::new(),
        })))
    }

    fn publish<'a>(
        &'a self,
        group: &'a str,
        payload: Bytes,
    ) -> futures_util::future::BoxFuture<'a, Result<Routed, HistoryError>> {
        self.published
            .lock()
            .expect("not poisoned")
            .push((group.to_owned(), payload));
        let routed = self.subscribers.get(group).copied().unwrap_or(0);
        Box::pin(std::future::ready(if group == "refused" {
            Err(HistoryError::CutOff)
        } else {
            Ok(Routed {
                routed,
                position: None,
            })
        }))
    }

    fn group_counts<'a>(
        &'a self,
        group: &'a str,
    ) -> futures_util::future::BoxFuture<'a, Vec<(NodeId, usize)>> {
        let counts = self
            .subscribers
            .get(group)
            .map(|n| vec![(1, *n)])
            .unwrap_or_default();
        Box::pin(std::future::ready(counts))
    }

    fn groups<'a>(
        &'a self,
        pattern: Option<&'a [u8]>,
    ) -> futures_util::future::BoxFuture<'a, Result<Vec<String>, PatternError>> {
        let answer = if pattern.is_some_and(|p| p.len() > crate::broker::MAX_PATTERN) {
            Err(PatternError::TooLong)
        } else {
            Ok(self.subscribers.keys().cloned().collect())
        };
        Box::pin(std::future::ready(answer))
    }

    fn local_groups(&self) -> usize {
        self.subscribers.len()
    }
}
