//! Both sides of the cluster-key handshake against fuzzer-chosen messages: a hello, an answer
//! or a proof that is not made with the key must be refused, never accepted, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use nonstop_proto::auth::{CLIENT_FINISH_LEN, CLIENT_HELLO_LEN, ClusterKey, Initiator, Responder, SERVER_HELLO_LEN};

fuzz_target!(|data: &[u8]| {
    let key = ClusterKey::from_bytes([5; 32]);
    if let Some(hello) = data.get(..CLIENT_HELLO_LEN) {
        let hello: &[u8; CLIENT_HELLO_LEN] = hello.try_into().expect("length checked");
        if let Ok((responder, _answer)) = Responder::on_client_hello(key.clone(), [1; 32], hello)
            && let Some(finish) = data.get(CLIENT_HELLO_LEN..CLIENT_HELLO_LEN + CLIENT_FINISH_LEN)
        {
            let finish: &[u8; CLIENT_FINISH_LEN] = finish.try_into().expect("length checked");
            assert!(responder.on_client_finish(finish).is_err(), "a guessed proof was accepted");
        }
    }
    if let Some(answer) = data.get(..SERVER_HELLO_LEN) {
        let answer: &[u8; SERVER_HELLO_LEN] = answer.try_into().expect("length checked");
        let (initiator, _hello) = Initiator::start(key, [2; 32]);
        assert!(initiator.on_server_hello(answer).is_err(), "a guessed answer was accepted");
    }
});
