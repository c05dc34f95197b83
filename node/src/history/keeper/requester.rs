//! The keeper as the way in for this node's publishers and recovering clients: requests
//! to remote owners, their timeouts, and recovery pages.

use super::*;

impl Keeper {
    /// Requests unanswered for [`REQUEST_TIMEOUT`] fail with `Timeout`; those whose group
    /// changed owner meanwhile fail at once, so that they are asked of the new owner.
    pub(super) fn expire_requests(&mut self, facts: &Facts) {
        let owner_of = |group: &str| facts.assignments.of_group(group).map(|a| a.owner);
        let late = |at: Instant| facts.now.saturating_duration_since(at) >= REQUEST_TIMEOUT;
        let publishes: Vec<(PublishId, HistoryError)> = self
            .publishes
            .iter()
            .filter_map(|(id, s)| {
                if late(s.at) {
                    Some((*id, HistoryError::Timeout))
                } else if owner_of(&s.group) != Some(s.owner) {
                    Some((*id, HistoryError::Unconfirmed))
                } else {
                    None
                }
            })
            .collect();
        for (id, error) in publishes {
            if let Some(sent) = self.publishes.remove(&id) {
                self.answer(Origin::Local(sent.ticket), Err(error));
            }
        }
        let reads: Vec<(u64, HistoryError)> = self
            .reads
            .iter()
            .filter_map(|(id, r)| {
                if late(r.at) {
                    Some((*id, HistoryError::Timeout))
                } else if owner_of(&r.group) != Some(r.owner) {
                    Some((*id, HistoryError::NotOwner(r.owner)))
                } else {
                    None
                }
            })
            .collect();
        for (id, error) in reads {
            if let Some(reading) = self.reads.remove(&id) {
                self.recovered(reading.ticket, Err(error));
            }
        }
    }

    /// Asks the owner for (the next page of) a recovery.
    pub(super) fn read_from(&mut self, reading: Reading, since: Option<Position>) {
        self.next_read += 1;
        let id = self.next_read;
        let message = History::Read {
            id,
            group: reading.group.clone(),
            since,
        };
        let owner = reading.owner;
        self.reads.insert(id, reading);
        self.send(owner, message);
    }

    /// A page of a recovery: the next is asked for, or the whole answer goes out.
    pub(super) fn on_read_reply(
        &mut self,
        facts: &Facts,
        id: u64,
        result: Result<ReadPage, HistoryError>,
    ) {
        let Some(mut reading) = self.reads.remove(&id) else {
            return;
        };
        let page = match result {
            Ok(page) => page,
            Err(e) => return self.recovered(reading.ticket, Err(e)),
        };
        // Later pages start inside the history the first one proved complete; one that is
        // not (evicted meanwhile) makes the whole recovery incomplete.
        let recovered = reading.recovered.unwrap_or(true) && page.recovered;
        reading.entries.extend(page.entries);
        match reading.entries.last() {
            Some(last) if page.more && recovered => {
                let since = Some(last.position);
                reading.recovered = Some(true);
                reading.at = facts.now;
                self.read_from(reading, since);
            }
            _ => {
                let recovery = Recovery {
                    recovered,
                    epoch: page.top.epoch,
                    top: page.top.offset,
                    entries: if recovered {
                        reading.entries
                    } else {
                        Vec::new()
                    },
                    more: false,
                };
                self.recovered(reading.ticket, Ok(recovery));
            }
        }
    }
}
