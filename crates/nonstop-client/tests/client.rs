//! The client against fake nodes: redirects followed on kept connections, a closed connection
//! replaced without losing the request, refusals that keep the request number.

use nonstop_client::{Client, ClientError};
use nonstop_proto::client::{ClientReply, ClientRequest, read_message, write_message};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

type Answer = Box<dyn Fn(&ClientRequest) -> Option<ClientReply> + Send + Sync>;

/// A fake node: answers each request with `answer` (`None`: close the connection), and closes
/// each connection after one answer if `one_per_connection`.
struct FakeNode {
    addr: SocketAddr,
    accepted: Arc<AtomicUsize>,
    seen: Arc<Mutex<Vec<ClientRequest>>>,
}

fn fake_node(answer: Answer) -> FakeNode {
    fake_node_with(answer, false)
}

fn fake_node_with(answer: Answer, one_per_connection: bool) -> FakeNode {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let accepted = Arc::new(AtomicUsize::new(0));
    let seen = Arc::new(Mutex::new(Vec::new()));
    let answer = Arc::new(answer);
    {
        let (accepted, seen) = (accepted.clone(), seen.clone());
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { return };
                accepted.fetch_add(1, Ordering::SeqCst);
                let (answer, seen) = (answer.clone(), seen.clone());
                std::thread::spawn(move || serve(&mut stream, &*answer, &seen, one_per_connection));
            }
        });
    }
    FakeNode { addr, accepted, seen }
}

fn serve(
    stream: &mut TcpStream,
    answer: &dyn Fn(&ClientRequest) -> Option<ClientReply>,
    seen: &Mutex<Vec<ClientRequest>>,
    one_per_connection: bool,
) {
    while let Ok(request) = read_message::<ClientRequest>(stream) {
        seen.lock().unwrap().push(request.clone());
        match answer(&request) {
            Some(reply) => write_message(stream, &reply).unwrap(),
            None => return,
        }
        if one_per_connection {
            return;
        }
    }
}

fn done(request: &ClientRequest) -> Option<ClientReply> {
    let ClientRequest::Call { request, body, .. } = request else { return None };
    Some(ClientReply::Done { request: *request, body: body.clone(), duplicate: false, term: 1 })
}

#[test]
fn redirects_between_nodes_reuse_their_connections() {
    // Two nodes that name each other as primary for a while (their views settling), then one
    // serves: the client follows every redirect without opening a connection per hop.
    let hops = Arc::new(AtomicUsize::new(0));
    let b_addr = Arc::new(Mutex::new(None::<SocketAddr>));
    let a = {
        let (hops, b_addr) = (hops.clone(), b_addr.clone());
        fake_node(Box::new(move |request| {
            if hops.fetch_add(1, Ordering::SeqCst) < 200 {
                Some(ClientReply::Redirect { primary: b_addr.lock().unwrap().map(|b| b.to_string()), term: 1 })
            } else {
                done(request)
            }
        }))
    };
    let a_addr = a.addr;
    let b = fake_node(Box::new(move |_| Some(ClientReply::Redirect { primary: Some(a_addr.to_string()), term: 1 })));
    *b_addr.lock().unwrap() = Some(b.addr);
    let mut client = Client::new(vec![b.addr, a.addr], 7);
    let echoed: u64 = client.call("svc", &42u64).unwrap();
    assert_eq!(echoed, 42);
    assert_eq!(a.accepted.load(Ordering::SeqCst), 1, "one connection to a, whatever the hops");
    assert_eq!(b.accepted.load(Ordering::SeqCst), 1, "one connection to b");
    assert!(a.seen.lock().unwrap().len() > 200);
}

#[test]
fn a_connection_the_node_closed_is_replaced_and_the_request_sent_again() {
    // The node closes every connection after one answer, as its idle timeout would between
    // two calls: the second call still gets its answer, with the next request number.
    let node = fake_node_with(Box::new(done), true);
    let mut client = Client::new(vec![node.addr], 3);
    for expected in 1..=3u64 {
        let answer = client.call_answered::<_, u64>("svc", &expected).unwrap();
        assert_eq!((answer.request, answer.reply, answer.answered_by), (expected, expected, node.addr));
    }
    assert_eq!(node.accepted.load(Ordering::SeqCst), 3);
    let numbers: Vec<u64> = node
        .seen
        .lock()
        .unwrap()
        .iter()
        .map(|r| match r {
            ClientRequest::Call { request, .. } => *request,
            other => panic!("{other:?}"),
        })
        .collect();
    assert_eq!(numbers, [1, 2, 3]);
}

#[test]
fn a_rejection_keeps_the_request_number_and_a_wrong_type_says_so() {
    let node = fake_node(Box::new(|request| match request {
        ClientRequest::Call { body, .. } if body == &postcard::to_allocvec(&0u64).unwrap() => {
            Some(ClientReply::Rejected { reason: "zero".into() })
        }
        other => done(other),
    }));
    let mut client = Client::new(vec![node.addr], 5);
    client.deadline = Duration::from_secs(5);
    let refused = client.call::<_, u64>("svc", &0u64).unwrap_err();
    assert!(matches!(&refused, ClientError::Rejected { reason, .. } if reason == "zero"), "{refused}");
    assert_eq!(client.next_request("svc"), 1, "nothing was applied: the number is used again");
    // The node echoes 8 bytes of a u64; read as a string, they do not decode.
    let wrong = client.call::<_, String>("svc", &u64::MAX).unwrap_err();
    assert!(wrong.to_string().contains("same types"), "{wrong}");
    assert_eq!(client.next_request("other"), 1, "numbers are per service");
}

#[test]
fn no_node_answering_ends_in_a_timeout_naming_the_problem() {
    let unused = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let mut client = Client::new(vec![unused], 9);
    client.deadline = Duration::from_millis(300);
    let error = client.call::<_, u64>("svc", &1u64).unwrap_err();
    assert!(matches!(error, ClientError::Timeout { .. }), "{error}");
    assert!(error.to_string().contains(&unused.to_string()), "{error}");
    let mut nobody = Client::new(Vec::new(), 9);
    assert!(nobody.call::<_, u64>("svc", &1u64).unwrap_err().to_string().contains("no node addresses"));
}

/// The async client follows the same redirects on kept connections and replaces a connection
/// the node closed, like the blocking one: one routing logic serves both.
#[cfg(feature = "tokio")]
#[test]
fn the_async_client_follows_redirects_and_replaces_closed_connections() {
    use nonstop_client::AsyncClient;
    let primary = fake_node_with(Box::new(done), true);
    let primary_addr = primary.addr;
    let other =
        fake_node(Box::new(move |_| Some(ClientReply::Redirect { primary: Some(primary_addr.to_string()), term: 1 })));
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    runtime.block_on(async {
        let mut client = AsyncClient::new(vec![other.addr, primary.addr], 4);
        for expected in 1..=3u64 {
            let echoed: u64 = client.call("svc", &expected).await.unwrap();
            assert_eq!(echoed, expected);
        }
        assert_eq!(client.next_request("svc"), 4);
    });
    assert_eq!(other.accepted.load(Ordering::SeqCst), 1, "redirected once, then the primary is known");
    assert_eq!(primary.accepted.load(Ordering::SeqCst), 3, "a new connection after each one the node closed");
}
