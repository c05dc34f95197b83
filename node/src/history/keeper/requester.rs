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
    }

    /// Queues an ask for a page of `group` after `since`, with the asks for the same
    /// page already waiting.
    pub(super) fn queue_read(&mut self, ticket: Ticket, group: String, since: Option<Position>) {
        self.counts.recovery_asks += 1;
        let key = (group, since);
        match self.asks.get_mut(&key) {
            Some(tickets) => tickets.push(ticket),
            None => {
                self.queued.push_back(key.clone());
                self.asks.insert(key, vec![ticket]);
            }
        }
    }

    /// Sends queued asks to their owners while read slots are free (node-wide and the
    /// owner's), in the order asked, one read for each page asked (whoever asked it).
    pub(super) fn send_reads(&mut self, facts: &Facts) {
        if self.queued.is_empty() || self.reads.len() >= MAX_READS_IN_FLIGHT {
            return;
        }
        let mut waiting = VecDeque::with_capacity(self.queued.len());
        while let Some(key) = self.queued.pop_front() {
            if self.reads.len() >= MAX_READS_IN_FLIGHT {
                waiting.push_back(key);
                waiting.extend(self.queued.drain(..));
                break;
            }
            let assignment = facts.assignments.of_group(&key.0).copied();
            if let Some(a) = assignment
                && a.owner != self.me
                && self.reads.values().filter(|r| r.owner == a.owner).count() >= MAX_READS_PER_OWNER
            {
                waiting.push_back(key);
                continue;
            }
            // A key queued twice (asked again once its first read left) is sent once.
            let Some(tickets) = self.asks.remove(&key) else {
                continue;
            };
            let (group, since) = key;
            match assignment {
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
        self.queued = waiting;
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
