//! The client port: one thread per connection, each request executed by the service's primary
//! and answered only once every backup holds its effect — or, for a read, the state it saw
//! (output commit).

use crate::agent::NodeStatus;
use crate::service::{Active, Serving};
use nonstop_proto::client::{ClientMemory, ClientReply, ClientRequest, read_message, write_message};
use nonstop_proto::primary::Ticket;
use nonstop_workloads::bank::{BankError, Executed, TransferRequest};
use std::collections::BTreeMap;
use std::io::{BufReader, BufWriter, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, RwLock, mpsc};
use std::time::Duration;

/// How long an answer may wait for the backups before the client is told to retry.
const HOLD_TIMEOUT: Duration = Duration::from_secs(2);

/// What the client port answers from.
pub struct Answering {
    /// Per service.
    pub services: BTreeMap<String, Arc<Serving>>,
    /// The node's status.
    pub status: Arc<RwLock<NodeStatus>>,
    /// Where switchover requests go (the agent's loop).
    pub switchovers: Mutex<mpsc::Sender<SwitchoverRequest>>,
    /// The node's fault points (refusing to be armed unless its config enables them).
    pub faults: Arc<nonstop_net::fault::FaultPoints>,
}

/// A switchover asked by an operator, for the agent's loop.
#[derive(Debug)]
pub struct SwitchoverRequest {
    /// The service.
    pub service: String,
    /// The backup to promote.
    pub to: crate::NodeId,
    /// Where the answer goes.
    pub reply: mpsc::Sender<ClientReply>,
}

/// How long a switchover may take before the operator is told it failed.
const SWITCHOVER_TIMEOUT: Duration = Duration::from_secs(10);

/// Serves clients on `listener` until the process ends.
pub fn serve(listener: TcpListener, answering: Arc<Answering>) {
    for stream in listener.incoming() {
        let Ok(stream) = stream else { continue };
        let answering = answering.clone();
        let _ = std::thread::Builder::new().name("nonstop-client".into()).spawn(move || {
            if let Err(error) = serve_one(stream, &answering) {
                tracing::debug!(%error, "client connection ended");
            }
        });
    }
}

fn serve_one(stream: TcpStream, answering: &Answering) -> std::io::Result<()> {
    stream.set_nodelay(true)?;
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut writer = BufWriter::new(stream);
    let mut worker = None;
    loop {
        let request: ClientRequest = match read_message(&mut reader) {
            Ok(request) => request,
            Err(nonstop_proto::client::ClientProtocolError::Io(_)) => return Ok(()),
            Err(error) => {
                let reply = ClientReply::Rejected { reason: error.to_string() };
                let _ = write_message(&mut writer, &reply);
                let _ = writer.flush();
                return Ok(());
            }
        };
        let reply = match request {
            ClientRequest::Status => {
                let status = answering.status.read().unwrap_or_else(|p| p.into_inner()).clone();
                ClientReply::Status { json: serde_json::to_string(&status).expect("status serializes") }
            }
            ClientRequest::Switchover { service, to } => switchover(answering, service, to),
            ClientRequest::ArmFault { point, countdown } => match nonstop_net::fault::FaultPoint::from_name(&point) {
                None => ClientReply::Rejected { reason: format!("no fault point {point:?}") },
                Some(point) => match answering.faults.arm(point, countdown) {
                    Ok(()) => ClientReply::Armed,
                    Err(reason) => ClientReply::Rejected { reason: reason.into() },
                },
            },
            request => answer(request, &answering.services, &mut worker),
        };
        write_message(&mut writer, &reply).map_err(std::io::Error::other)?;
        writer.flush()?;
    }
}

fn switchover(answering: &Answering, service: String, to: u64) -> ClientReply {
    let Some(serving) = answering.services.get(&service) else {
        return ClientReply::Rejected { reason: format!("no service {service:?} on this cluster") };
    };
    if serving.active().is_none() {
        return redirect(serving);
    }
    let (reply, answer) = mpsc::channel();
    let request = SwitchoverRequest { service, to: crate::NodeId(to), reply };
    if answering.switchovers.lock().unwrap_or_else(|p| p.into_inner()).send(request).is_err() {
        return ClientReply::Unavailable { reason: "the node is shutting down".into() };
    }
    answer
        .recv_timeout(SWITCHOVER_TIMEOUT)
        .unwrap_or_else(|_| ClientReply::Unavailable { reason: "the switchover did not finish in time".into() })
}

fn redirect(serving: &Serving) -> ClientReply {
    let (primary, term) = serving.redirect();
    ClientReply::Redirect { primary: primary.map(|p| p.to_string()), term: term.0 }
}

fn answer(
    request: ClientRequest,
    services: &BTreeMap<String, Arc<Serving>>,
    worker: &mut Option<usize>,
) -> ClientReply {
    let service = match &request {
        ClientRequest::Transfer { service, .. }
        | ClientRequest::Locate { service }
        | ClientRequest::Read { service, .. }
        | ClientRequest::Audit { service, .. } => service,
        ClientRequest::Status | ClientRequest::Switchover { .. } | ClientRequest::ArmFault { .. } => {
            unreachable!("answered by the caller")
        }
    };
    let Some(serving) = services.get(service) else {
        return ClientReply::Rejected { reason: format!("no service {service:?} on this cluster") };
    };
    let Some(active) = serving.active() else { return redirect(serving) };
    let answered = match request {
        ClientRequest::Locate { .. }
        | ClientRequest::Status
        | ClientRequest::Switchover { .. }
        | ClientRequest::ArmFault { .. } => return redirect(serving),
        ClientRequest::Transfer { client, request, account, teller, delta, .. } => {
            if active.draining.load(Ordering::SeqCst) {
                return ClientReply::Unavailable { reason: "switchover in progress; retry".into() };
            }
            let worker = *worker.get_or_insert_with(|| active.worker());
            let transfer = TransferRequest { client, request, account, teller, delta };
            let (executed, ticket) = match active.app.execute(&active.mirror, worker, &transfer) {
                Ok(done) => done,
                Err(error @ (BankError::BadRequest(_) | BankError::OutOfOrder { .. } | BankError::TableFull)) => {
                    // A refusal is an answer too: it leaves only from a primary that still holds
                    // its lease and whose backups hold what it decided on. A deposed primary
                    // that lacks the client's latest requests must not refuse it for good.
                    let refusal = ClientReply::Rejected { reason: error.to_string() };
                    let ticket = Ticket { checkpoint: active.primary.checkpoint_now() };
                    return release(serving, &active, (refusal, ticket));
                }
                Err(error) => return ClientReply::Unavailable { reason: error.to_string() },
            };
            let term = active.term.0;
            let reply = match executed {
                Executed::Applied { balance } => ClientReply::Done { request, balance, duplicate: false, term },
                Executed::Duplicate { balance } => ClientReply::Done { request, balance, duplicate: true, term },
                Executed::Stale { last } => ClientReply::Stale { request, last },
            };
            (reply, ticket)
        }
        ClientRequest::Read { client, account, .. } => {
            // A read-only transaction: it locks and checks just the two lines it reads. The
            // ticket is a checkpoint cut after it, which holds everything it saw.
            let reply = match active.app.read(&active.mirror, client, account) {
                Ok((slot, balance)) => ClientReply::Read { memory: slot.map(memory), balance, term: active.term.0 },
                Err(error) => ClientReply::Rejected { reason: error.to_string() },
            };
            (reply, Ticket { checkpoint: active.primary.checkpoint_now() })
        }
        ClientRequest::Audit { clients, accounts, .. } => read(&active, |image| ClientReply::Audit {
            check: active.app.check(image),
            clients: clients.iter().map(|&c| (c, memory_of(&active, image, c))).collect(),
            balances: accounts.iter().map(|&a| (a, active.app.balance(image, a))).collect(),
            term: active.term.0,
        }),
    };
    release(serving, &active, answered)
}

/// Reads the region with every transaction held off, after checking every line of it against
/// its seal; the ticket is a checkpoint cut after the read, so releasing the answer under it
/// means the backups hold everything the read saw.
fn read(active: &Active, read: impl FnOnce(&[u8]) -> ClientReply) -> (ClientReply, Ticket) {
    let reply = active.mirror.quiesced_checked(|image, _| read(image));
    (reply, Ticket { checkpoint: active.primary.checkpoint_now() })
}

/// Output commit: the reply leaves only once every backup holds `ticket`'s checkpoint, and
/// never from a deposed primary.
fn release(serving: &Serving, active: &Active, (reply, ticket): (ClientReply, Ticket)) -> ClientReply {
    if let Err(error) = active.primary.wait_held(ticket, HOLD_TIMEOUT) {
        return ClientReply::Unavailable { reason: format!("not yet held by the backups: {error}") };
    }
    if active.deposed.load(Ordering::SeqCst) {
        return redirect(serving);
    }
    reply
}

fn memory_of(active: &Active, image: &[u8], client: u64) -> Option<ClientMemory> {
    active.app.client(image, client).map(memory)
}

fn memory(slot: nonstop_workloads::bank::ClientSlot) -> ClientMemory {
    ClientMemory { request: slot.request.get(), applied: slot.applied.get(), balance: slot.balance.get() }
}
