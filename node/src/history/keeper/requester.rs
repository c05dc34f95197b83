//! The keeper as the way in for this node's publishers and recovering clients: requests
//! to remote owners, their timeouts, and recovery pages, queued and shared.

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
                self.recovered_all(reading.tickets, Err(error));
            }
        }
        // Asks that waited for a slot too long (owners answering slowly, or not at all).
        let stale: Vec<ReadKey> = self
            .asks
            .iter()
            .filter(|(_, (_, at))| facts.now.saturating_duration_since(*at) >= READ_QUEUE_PATIENCE)
            .map(|(key, _)| key.clone())
            .collect();
        for key in stale {
            if let Some((tickets, _)) = self.asks.remove(&key) {
                self.recovered_all(tickets, Err(HistoryError::Timeout));
            }
        }
    }

    /// Queues an ask for a page of `group` after `since`, with the asks for the same
    /// page already waiting.
    pub(super) fn queue_read(
        &mut self,
        facts: &Facts,
        ticket: Ticket,
        group: String,
        since: Option<Position>,
    ) {
        self.counts.recovery_asks += 1;
        let key = (group, since);
        match self.asks.get_mut(&key) {
            Some((tickets, _)) => tickets.push(ticket),
            None => {
                self.queued.push_back(key.clone());
                self.asks.insert(key, (vec![ticket], facts.now));
            }
        }
    }

    /// Sends queued asks to their owners while read slots are free, one read for each
    /// page asked (whoever asked it).
    pub(super) fn send_reads(&mut self, facts: &Facts) {
        while self.reads.len() < MAX_READS_IN_FLIGHT {
            let Some(key) = self.queued.pop_front() else {
                return;
            };
            // Gone when it expired while queued.
            let Some((tickets, _)) = self.asks.remove(&key) else {
                continue;
            };
            let (group, since) = key;
            match facts.assignments.of_group(&group).copied() {
                None => self.recovered_all(tickets, Err(HistoryError::NotAssigned)),
                // The bucket came to this node meanwhile.
                Some(a) if a.owner == self.me => {
                    let result = self.read(facts, &group, since, READ_PAGE);
                    self.recovered_all(tickets, result);
                }
                Some(a) => {
                    self.counts.recovery_reads += 1;
                    self.next_read += 1;
                    let id = self.next_read;
                    let message = History::Read {
                        id,
                        group: group.clone(),
                        since,
                    };
                    let reading = Reading {
                        tickets,
                        group,
                        owner: a.owner,
                        at: facts.now,
                    };
                    self.reads.insert(id, reading);
                    self.send(a.owner, message);
                }
            }
        }
    }

    /// The owner's page: the answer of every ask the read served; the slot goes to the
    /// next queued page.
    pub(super) fn on_read_reply(
        &mut self,
        facts: &Facts,
        id: u64,
        result: Result<ReadPage, HistoryError>,
    ) {
        let Some(reading) = self.reads.remove(&id) else {
            return;
        };
        let result = result.map(|page| Recovery {
            recovered: page.recovered,
            epoch: page.top.epoch,
            top: page.top.offset,
            entries: page.entries,
            more: page.more,
        });
        self.recovered_all(reading.tickets, result);
        self.send_reads(facts);
    }
}
