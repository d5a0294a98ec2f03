//! Operator requests need the cluster key: an attacker who reaches a node's ports cannot read
//! its status, move its primary or arm its fault points, and a node whose config does not
//! enable fault points refuses to arm one even for the key's holder.

mod common;

use common::node;
use nonstop_node::operator::{self, OperatorError};
use nonstop_proto::auth::ClusterKey;
use nonstop_proto::operator::{OperatorReply, OperatorRequest};
use std::time::Duration;

#[test]
fn operator_requests_need_the_cluster_key_and_fault_points_need_the_config() {
    let node = node("operator", 0x2e6000000000, "");
    let status = operator::status(node.control, &node.key, Duration::from_secs(2)).expect("the key's holder reads it");
    assert_eq!(status.node, 1);

    // Without the key: the handshake fails, nothing is answered.
    let wrong = ClusterKey::from_bytes([4; 32]);
    for request in [
        OperatorRequest::Status,
        OperatorRequest::Switchover { service: "bank".into(), to: 2 },
        OperatorRequest::ArmFault { point: "before-close".into(), countdown: 1 },
    ] {
        match operator::ask(node.control, &wrong, &request, Duration::from_secs(2)) {
            Err(OperatorError::Conn(error)) => assert!(error.to_string().contains("authentication"), "{error}"),
            other => panic!("{request:?} without the key: {other:?}"),
        }
    }

    // With the key, on a node whose config leaves fault points off: refused, and it says why.
    match operator::arm_fault(node.control, &node.key, "before-close", 1) {
        Err(OperatorError::Rejected(reason)) => assert!(reason.contains("fault_points"), "{reason}"),
        other => panic!("arming on a node without fault points: {other:?}"),
    }
    // A switchover with no backup to move to is refused by the role, not attempted.
    match operator::ask(
        node.control,
        &node.key,
        &OperatorRequest::Switchover { service: "bank".into(), to: 2 },
        Duration::from_secs(5),
    ) {
        Ok(OperatorReply::Rejected { .. }) => {}
        other => panic!("a switchover to a node that is no backup: {other:?}"),
    }
    assert!(operator::status(node.control, &node.key, Duration::from_secs(2)).is_ok(), "the node lives on");
}
