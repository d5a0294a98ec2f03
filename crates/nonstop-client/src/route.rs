//! Where a call goes next: the retry and redirect logic both clients share, as a state machine
//! (what the last attempt got in, the next step out; time passed in as a value).

use crate::ClientError;
use nonstop_proto::client::ClientReply;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

/// Consecutive attempts without an answer before the client starts to wait longer between
/// them: a failover takes a few, a partition or a cluster without a primary many.
const PATIENT_ATTEMPTS: u32 = 8;
/// The longest wait between two attempts.
const LONGEST_PAUSE: Duration = Duration::from_millis(16);

/// What a client knows of the cluster: its nodes, the one it tries next, and where each
/// service's primary was last found.
#[derive(Debug)]
pub(crate) struct Router {
    nodes: Vec<SocketAddr>,
    target: usize,
    primaries: BTreeMap<String, SocketAddr>,
}

/// One call in progress.
#[derive(Debug)]
pub(crate) struct Call {
    service: String,
    /// Attempts so far.
    pub(crate) attempts: u32,
    /// The last problem seen, for the timeout's message.
    last: String,
}

/// What to do after an attempt.
#[derive(Debug)]
pub(crate) enum Step {
    /// The reply is the call's answer.
    Answer(ClientReply),
    /// Try again (at the router's next target) after this pause.
    Retry(Duration),
    /// The call failed for good.
    Fail(ClientError),
}

impl Router {
    pub(crate) fn new(nodes: Vec<SocketAddr>) -> Router {
        Router { nodes, target: 0, primaries: BTreeMap::new() }
    }

    /// Where to send `call` next: its service's primary if known, else the next node.
    pub(crate) fn target(&self, call: &Call) -> Result<SocketAddr, ClientError> {
        if let Some(primary) = self.primaries.get(&call.service) {
            return Ok(*primary);
        }
        self.nodes.get(self.target % self.nodes.len().max(1)).copied().ok_or_else(|| ClientError::Rejected {
            service: call.service.clone(),
            reason: "the client was given no node addresses".into(),
        })
    }

    fn next_node(&mut self, service: &str) {
        self.primaries.remove(service);
        self.target = (self.target + 1) % self.nodes.len().max(1);
    }

    /// Decides what follows `outcome`, the attempt of `call` at `addr`; `accept` says which
    /// replies answer the call.
    pub(crate) fn step(
        &mut self,
        call: &mut Call,
        addr: SocketAddr,
        outcome: std::io::Result<ClientReply>,
        accept: impl Fn(&ClientReply) -> bool,
    ) -> Step {
        // Quick retries while a failover settles; slower ones once it takes long.
        let pause = Duration::from_millis(1 << (call.attempts / PATIENT_ATTEMPTS).min(4)).min(LONGEST_PAUSE);
        match outcome {
            Ok(reply) if accept(&reply) => Step::Answer(reply),
            Ok(ClientReply::Redirect { primary, .. }) => {
                let primary: Option<SocketAddr> = primary.and_then(|p| p.parse().ok());
                call.last = format!("redirected to {primary:?}");
                match primary {
                    Some(primary) if primary != addr => {
                        self.primaries.insert(call.service.clone(), primary);
                        // Nodes that name each other while their views settle: slow down.
                        Step::Retry(if call.attempts >= PATIENT_ATTEMPTS { pause } else { Duration::ZERO })
                    }
                    // It names itself (its view is older than its role) or nobody: ask another.
                    _ => {
                        self.next_node(&call.service);
                        Step::Retry(pause)
                    }
                }
            }
            Ok(ClientReply::Rejected { reason }) => {
                Step::Fail(ClientError::Rejected { service: call.service.clone(), reason })
            }
            Ok(other) => {
                call.last = format!("{other:?}");
                Step::Retry(pause)
            }
            Err(error) => {
                call.last = format!("{addr}: {error}");
                self.next_node(&call.service);
                Step::Retry(pause)
            }
        }
    }
}

impl Call {
    pub(crate) fn new(service: &str) -> Call {
        Call { service: service.to_string(), attempts: 0, last: String::from("no attempt yet") }
    }

    /// The call's failure after trying for `waited`.
    pub(crate) fn timed_out(self, waited: Duration) -> ClientError {
        ClientError::Timeout { service: self.service, waited, last: self.last }
    }
}

/// Whether `error` says the peer had closed the connection (rather than being slow or gone):
/// a kept connection the node closed for idleness, worth one more try on a new connection.
pub(crate) fn closed(error: &std::io::Error) -> bool {
    use std::io::ErrorKind::{BrokenPipe, ConnectionAborted, ConnectionReset, UnexpectedEof};
    matches!(error.kind(), BrokenPipe | ConnectionAborted | ConnectionReset | UnexpectedEof)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(n: u8) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, n], 7101))
    }

    #[test]
    fn redirects_and_errors_move_the_call_along() {
        let mut router = Router::new(vec![addr(1), addr(2), addr(3)]);
        let mut call = Call::new("svc");
        let accept = |reply: &ClientReply| matches!(reply, ClientReply::Done { .. });
        assert_eq!(router.target(&call).unwrap(), addr(1));
        let redirect = ClientReply::Redirect { primary: Some(addr(3).to_string()), term: 2 };
        assert!(matches!(router.step(&mut call, addr(1), Ok(redirect), accept), Step::Retry(d) if d.is_zero()));
        assert_eq!(router.target(&call).unwrap(), addr(3), "to the primary named, at once");
        let refused = Err(std::io::Error::from(std::io::ErrorKind::ConnectionRefused));
        assert!(matches!(router.step(&mut call, addr(3), refused, accept), Step::Retry(d) if !d.is_zero()));
        assert_eq!(router.target(&call).unwrap(), addr(2), "a dead primary is forgotten: the next node");
        let itself = ClientReply::Redirect { primary: Some(addr(2).to_string()), term: 2 };
        router.step(&mut call, addr(2), Ok(itself), accept);
        assert_eq!(router.target(&call).unwrap(), addr(3), "a node naming itself is passed over");
        let rejected = ClientReply::Rejected { reason: "no".into() };
        assert!(matches!(
            router.step(&mut call, addr(3), Ok(rejected), accept),
            Step::Fail(ClientError::Rejected { .. })
        ));
        call.attempts = 100;
        let busy = ClientReply::Unavailable { reason: "failover".into() };
        assert!(matches!(router.step(&mut call, addr(3), Ok(busy), accept), Step::Retry(d) if d == LONGEST_PAUSE));
        assert!(call.timed_out(Duration::from_secs(1)).to_string().contains("failover"));
    }
}
