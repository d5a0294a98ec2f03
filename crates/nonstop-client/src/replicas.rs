//! Calls of an actively replicated service from the blocking client: the call goes to every
//! replica, and the client votes on their replies ([`crate::vote`]).
//!
//! Each replica gets a link: a thread of the client's that owns one connection to it, sends
//! what the client asks and hands back what the replica replied. A replica that is paused or
//! cut off holds up only its own link, so the vote is decided by the others as soon as they
//! agree: the client sees no failover at all.

use crate::vote::{ReplicaId, ReplyMode, Verdict, Vote};
use crate::{Answered, ClientError, io_error};
use nonstop_proto::client::{self, ClientReply, ClientRequest, MAX_REPLICAS, read_message, write_message};
use std::collections::BTreeMap;
use std::io::{BufReader, BufWriter, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::time::{Duration, Instant};

/// What a link hands back: the replica's number, the ask it answers (see [`Group::asked`]), and
/// the reply (or why there is none).
type Replied = (u16, u64, std::io::Result<ClientReply>);

/// How long a query waits before asking again when the replicas' answers disagree (they
/// answered at different points of the order, around a write).
const QUERY_REASK: Duration = Duration::from_millis(1);

/// The longest a call waits before asking again a replica that sent it elsewhere, could not
/// answer yet, or could not be reached; the wait doubles from 1 ms up to this.
const LONGEST_REASK: Duration = Duration::from_millis(16);

/// An active service's replicas, as its replicas described them.
#[derive(Debug)]
pub(crate) struct Group {
    mode: ReplyMode,
    /// Per replica, in replica order: the link to it (`None`: its address is unusable).
    links: Vec<Option<Sender<(u64, ClientRequest)>>>,
    addrs: Vec<Option<SocketAddr>>,
    replies: Receiver<Replied>,
    /// How long the client waits for a replica's vote before asking it again.
    attempt_timeout: Duration,
    /// Asks sent to the links so far: each ask is numbered, so that a late reply to an earlier
    /// one (a query's, whose request number is always 0) is never counted in a later vote.
    asked: u64,
}

impl Group {
    /// The group a replica's vote describes, with a link per replica; refused if the vote
    /// names more than [`MAX_REPLICAS`] replicas (each would cost a thread) or none.
    pub(crate) fn new(service: &str, vote: &client::Vote, attempt_timeout: Duration) -> Result<Group, ClientError> {
        if vote.group.is_empty() || vote.group.len() > MAX_REPLICAS {
            return Err(ClientError::Rejected {
                service: service.to_string(),
                reason: format!(
                    "a replica described a group of {} replicas; an active service has 1 to {MAX_REPLICAS}",
                    vote.group.len()
                ),
            });
        }
        let (tx, replies) = mpsc::channel();
        let addrs: Vec<Option<SocketAddr>> = vote.group.iter().map(|a| a.parse().ok()).collect();
        let links = addrs
            .iter()
            .enumerate()
            .map(|(number, addr)| {
                let (addr, tx) = ((*addr)?, tx.clone());
                let (requests, asked) = mpsc::channel();
                std::thread::Builder::new()
                    .name(format!("nonstop-replica-link-{number}"))
                    .spawn(move || link(number as u16, addr, asked, tx, attempt_timeout))
                    .ok()?;
                Some(requests)
            })
            .collect();
        Ok(Group { mode: vote.mode, links, addrs, replies, attempt_timeout, asked: 0 })
    }

    /// Takes `service`'s group out of `groups` for a call: the one known, or, if `first` (a
    /// replica's vote) describes another or none is known, the one `first` describes. Put it
    /// back after the call.
    pub(crate) fn take(
        groups: &mut BTreeMap<String, Group>,
        service: &str,
        first: Option<&client::Vote>,
        attempt_timeout: Duration,
    ) -> Result<Group, ClientError> {
        match (groups.remove(service), first) {
            (Some(group), Some(first)) if !group.matches(first) => Group::new(service, first, attempt_timeout),
            (Some(group), _) => Ok(group),
            (None, Some(first)) => Group::new(service, first, attempt_timeout),
            (None, None) => unreachable!("a group is known once a replica voted"),
        }
    }

    /// Whether `vote` describes this group still.
    fn matches(&self, vote: &client::Vote) -> bool {
        vote.mode == self.mode
            && vote.group.len() == self.addrs.len()
            && vote.group.iter().zip(&self.addrs).all(|(a, b)| a.parse().ok() == *b)
    }

    /// Calls request `number` (`request`; 0 and a [`ClientRequest::Query`] for a query) on the
    /// replicas and votes on their replies, starting from `first` if one replica answered
    /// already. Asks again every attempt timeout those that have not voted, until `deadline`
    /// after `started`.
    ///
    /// Replicas execute a call at one point of the order, so replies that disagree so that
    /// none can win mean a faulty replica: [`ClientError::Undecided`]. A query is answered by
    /// each replica from its state as it stands, and around a write replicas may stand at
    /// different points: the query is asked again until enough agree. Under `majority` the
    /// answer agreed on reflects every call answered before the query was sent: f+1 replicas
    /// executed that call and f+1 agree on the answer, so one replica at least did both.
    pub(crate) fn call(
        &mut self,
        service: &str,
        number: u64,
        request: &ClientRequest,
        first: Option<client::Vote>,
        started: Instant,
        deadline: Duration,
    ) -> Result<Answered<Vec<u8>>, ClientError> {
        let replicas = self.links.len() as u16;
        // Under leader-only the followers send the client to the leader, so the one reply
        // that comes is the leader's: the first.
        let mode = match self.mode {
            ReplyMode::LeaderOnly => ReplyMode::PassFirst,
            mode => mode,
        };
        let mut vote = Vote::new(mode, replicas, ReplicaId(0))
            .map_err(|error| ClientError::Rejected { service: service.to_string(), reason: error.to_string() })?;
        let mut votes: BTreeMap<u16, client::Vote> = BTreeMap::new();
        let mut attempts = 0u32;
        let mut last = String::from("no reply yet");
        let query = matches!(request, ClientRequest::Query { .. });
        let mut verdict = first.and_then(|first| take(first, &mut vote, &mut votes));
        let deadline = started + deadline;
        let mut next_ask = Instant::now();
        // Per replica, when to ask it again sooner than the attempt timeout, and how often it
        // failed to vote in a row: a follower under leader-only redirects until a new leader
        // is elected, and a dead replica's link fails at once.
        let mut reask: Vec<Option<Instant>> = vec![None; self.links.len()];
        let mut failures = vec![0u32; self.links.len()];
        loop {
            match verdict {
                Some(Verdict::Decided) => return self.answer(service, &vote, &votes, number, attempts),
                Some(Verdict::Undecidable) if query => {
                    vote = Vote::new(mode, replicas, ReplicaId(0)).expect("accepted above");
                    votes.clear();
                    last = "the replicas' answers disagreed; asked again".into();
                    next_ask = Instant::now() + QUERY_REASK;
                }
                Some(Verdict::Undecidable) => {
                    return Err(ClientError::Undecided {
                        service: service.to_string(),
                        request: number,
                        replies: votes.values().map(|v| format!("replica {}: {:?}", v.replica, v.outcome)).collect(),
                    });
                }
                Some(Verdict::Waiting) | None => {}
            }
            let now = Instant::now();
            if now >= deadline {
                return Err(ClientError::Timeout {
                    service: service.to_string(),
                    waited: started.elapsed(),
                    last: format!("{} of {replicas} replicas voted; last problem: {last}", votes.len()),
                });
            }
            if now >= next_ask {
                if query && attempts > 0 {
                    // A query's answers compare only within one ask: the replicas' states move
                    // on, and answers that disagree may wait for a replica that is gone, so an
                    // undecided query asks every replica afresh.
                    vote = Vote::new(mode, replicas, ReplicaId(0)).expect("accepted above");
                    votes.clear();
                }
                attempts += 1;
                self.asked += 1;
                for (replica, link) in self.links.iter().enumerate() {
                    if let Some(link) = link
                        && !votes.contains_key(&(replica as u16))
                    {
                        let _ = link.send((self.asked, request.clone()));
                    }
                }
                next_ask = now + self.attempt_timeout;
                reask.iter_mut().for_each(|at| *at = None);
            }
            for (replica, at) in reask.iter_mut().enumerate() {
                if let (Some(due), Some(link)) = (*at, &self.links[replica])
                    && due <= now
                    && !votes.contains_key(&(replica as u16))
                {
                    let _ = link.send((self.asked, request.clone()));
                    *at = None;
                }
            }
            let wake = reask.iter().flatten().copied().fold(next_ask.min(deadline), Instant::min);
            // Replies to this call's asks count (a reply to an earlier ask of the same call is
            // as good as one to the latest); for a query, only the latest ask's.
            let first_ask = self.asked + 1 - u64::from(attempts.max(1));
            let current = |ask: u64| if query { ask == self.asked } else { ask >= first_ask };
            let mut retry_soon = |replica: u16| {
                if !query && let Some(failed) = failures.get_mut(usize::from(replica)) {
                    let pause = Duration::from_millis(1 << (*failed).min(4)).min(LONGEST_REASK);
                    *failed += 1;
                    reask[usize::from(replica)] = Some(Instant::now() + pause);
                }
            };
            verdict = match self.replies.recv_timeout(wake.saturating_duration_since(now)) {
                Ok((_, ask, _)) if !current(ask) => None,
                Ok((_, _, Ok(ClientReply::Voted(replied)))) if replied.request == number => {
                    take(*replied, &mut vote, &mut votes)
                }
                Ok((_, _, Ok(ClientReply::Rejected { reason }))) => {
                    return Err(ClientError::Rejected { service: service.to_string(), reason });
                }
                Ok((replica, _, Ok(other))) => {
                    last = format!("replica {replica}: {other:?}");
                    retry_soon(replica);
                    None
                }
                Ok((replica, _, Err(error))) => {
                    last = format!("replica {replica}: {error}");
                    retry_soon(replica);
                    None
                }
                Err(RecvTimeoutError::Timeout) => None,
                Err(RecvTimeoutError::Disconnected) => {
                    return Err(ClientError::Rejected {
                        service: service.to_string(),
                        reason: "every link to the replicas ended".into(),
                    });
                }
            };
        }
    }

    /// The decided vote's answer: the service's reply, or its refusal.
    fn answer(
        &self,
        service: &str,
        vote: &Vote,
        votes: &BTreeMap<u16, client::Vote>,
        number: u64,
        attempts: u32,
    ) -> Result<Answered<Vec<u8>>, ClientError> {
        // Every replica that replied and did not dissent gave the decided reply.
        let dissenters = vote.dissenters();
        let winner = votes
            .values()
            .find(|v| !dissenters.contains(&ReplicaId(v.replica)))
            .expect("the decided reply is one replica's");
        let reply =
            winner.outcome.clone().map_err(|reason| ClientError::Rejected { service: service.to_string(), reason })?;
        Ok(Answered {
            reply,
            request: number,
            duplicate: votes.values().all(|v| v.duplicate),
            term: 0,
            attempts: attempts.max(1),
            answered_by: self.addrs[usize::from(winner.replica)].expect("a replica that replied has an address"),
        })
    }
}

/// Counts `replied` in `vote` (a second reply of one replica, or one from outside the group,
/// is not counted), and says where the vote stands.
fn take(replied: client::Vote, vote: &mut Vote, votes: &mut BTreeMap<u16, client::Vote>) -> Option<Verdict> {
    let ballot = postcard::to_allocvec(&replied.outcome).expect("outcomes encode");
    let verdict = vote.reply(ReplicaId(replied.replica), ballot).ok()?;
    votes.insert(replied.replica, replied);
    Some(verdict)
}

/// One replica's link: sends each request asked (only the newest, if several queued while the
/// replica was slow) and hands back the reply with the ask's number, reconnecting after an
/// error.
fn link(
    replica: u16,
    addr: SocketAddr,
    asked: Receiver<(u64, ClientRequest)>,
    replies: Sender<Replied>,
    attempt_timeout: Duration,
) {
    let mut connection: Option<(BufReader<TcpStream>, BufWriter<TcpStream>)> = None;
    while let Ok(mut next) = asked.recv() {
        while let Ok(newer) = asked.try_recv() {
            next = newer;
        }
        let (ask, request) = next;
        let reply = (|| {
            if connection.is_none() {
                let stream = TcpStream::connect_timeout(&addr, attempt_timeout)?;
                stream.set_nodelay(true)?;
                stream.set_read_timeout(Some(attempt_timeout))?;
                connection = Some((BufReader::new(stream.try_clone()?), BufWriter::new(stream)));
            }
            let (reader, writer) = connection.as_mut().expect("connected above");
            write_message(writer, &request).map_err(io_error)?;
            writer.flush()?;
            read_message(reader).map_err(io_error)
        })();
        if reply.is_err() {
            connection = None;
        }
        if replies.send((replica, ask, reply)).is_err() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vote(group: usize) -> client::Vote {
        client::Vote {
            request: 1,
            outcome: Ok(vec![]),
            duplicate: false,
            replica: 0,
            group: (0..group).map(|n| format!("127.0.0.1:{}", 7000 + n)).collect(),
            leader: None,
            mode: ReplyMode::Majority,
        }
    }

    #[test]
    fn a_vote_naming_too_many_replicas_or_none_starts_no_links() {
        for size in [0, MAX_REPLICAS + 1, 10_000] {
            let refused = Group::new("svc", &vote(size), Duration::from_millis(10)).map(|_| ()).unwrap_err();
            assert!(refused.to_string().contains(&format!("{size} replicas")), "{refused}");
        }
        let group = Group::new("svc", &vote(3), Duration::from_millis(10)).unwrap();
        assert_eq!(group.links.iter().flatten().count(), 3);
    }
}
