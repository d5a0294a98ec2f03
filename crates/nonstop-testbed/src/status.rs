//! `nonstop status`: every node's view, merged into one table per service, in the spirit of
//! `patronictl list`.

use nonstop_node::status::NodeStatus;
use std::fmt::Write;
use std::net::SocketAddr;

/// Renders the statuses as text tables.
pub fn render(statuses: &[(u64, SocketAddr, Option<NodeStatus>)]) -> String {
    let mut out = String::new();
    // The node that knows the newest Raft term speaks for the cluster.
    let Some(newest) = statuses.iter().filter_map(|(_, _, s)| s.as_ref()).max_by_key(|s| s.raft_term) else {
        return "no node answered: is the cluster running, and are these its control addresses, and is this its key?\n"
            .into();
    };
    let leader = newest.leader.map_or("none".to_string(), |l| format!("node {l}"));
    let _ = writeln!(
        out,
        "cluster of {} nodes; control-plane leader: {leader} (raft term {})",
        statuses.len(),
        newest.raft_term
    );
    for service in &newest.services {
        let _ = writeln!(
            out,
            "\nservice {}: term {}, primary node {}, backups {:?}, failovers {}",
            service.name, service.term, service.primary, service.backups, service.failovers
        );
        if service.degraded {
            let output = if service.holding_output { "replies held" } else { "serving with fewer copies" };
            let _ = writeln!(
                out,
                "DEGRADED: {} of {} backups, catching up {:?}; {output} (min_backups {})",
                service.backups.len(),
                service.backups_wanted,
                service.catching_up,
                service.min_backups
            );
        }
        let lag = statuses
            .iter()
            .filter_map(|(_, _, s)| s.as_ref())
            .filter(|s| s.node == service.primary)
            .flat_map(|s| s.services.iter().filter(|x| x.name == service.name).flat_map(|x| x.lag.clone()))
            .collect::<Vec<_>>();
        let _ = writeln!(out, "| node | client | up | role | term | held | lag (checkpoints) | lag (bytes) |");
        let _ = writeln!(out, "|---:|---|---|---|---:|---:|---:|---:|");
        for (id, addr, status) in statuses {
            let mine = status.as_ref().and_then(|s| s.services.iter().find(|x| x.name == service.name));
            let (role, held) = match mine {
                Some(mine) => (mine.role.clone(), mine.held.map_or("-".into(), |h| h.to_string())),
                None => ("-".into(), "-".into()),
            };
            let (lag_checkpoints, lag_bytes) = lag
                .iter()
                .find(|lag| lag.backup == *id)
                .map_or(("".into(), "".into()), |lag| (lag.checkpoints.to_string(), lag.bytes.to_string()));
            let _ = writeln!(
                out,
                "| {id} | {addr} | {} | {role} | {} | {held} | {lag_checkpoints} | {lag_bytes} |",
                if status.is_some() { "yes" } else { "no" },
                mine.map_or("-".into(), |m| m.term.to_string()),
            );
        }
        if let Some(p) = &service.last_promotion {
            let reason = format!("{:?}", p.reason).to_lowercase();
            let _ = writeln!(out, "last {reason}: {} -> {}, {}, resumed from {}", p.from, p.to, p.term, p.checkpoint);
        }
    }
    for replicated in &newest.replicas {
        render_active(&mut out, statuses, &replicated.name);
    }
    out
}

/// One actively replicated service: every replica's view of the order and what it executed.
fn render_active(out: &mut String, statuses: &[(u64, SocketAddr, Option<NodeStatus>)], name: &str) {
    let workers = statuses
        .iter()
        .filter_map(|(_, _, status)| status.as_ref()?.replicas.iter().find(|r| r.name == name)?.workers.clone())
        .next();
    match workers {
        Some(w) => {
            let _ = writeln!(
                out,
                "\nservice {name}: actively replicated, {} worker threads under {}",
                w.threads, w.scheduler
            );
        }
        None => {
            let _ = writeln!(out, "\nservice {name}: actively replicated");
        }
    }
    let _ = writeln!(
        out,
        "| node | client | up | replica | member | order leader | order term | applied index | position | executed | state transfers | standing |"
    );
    let _ = writeln!(out, "|---:|---|---|---:|---|---:|---:|---:|---:|---:|---:|---|");
    for (id, addr, status) in statuses {
        let up = if status.is_some() { "yes" } else { "no" };
        match status.as_ref().and_then(|s| s.replicas.iter().find(|r| r.name == name)) {
            Some(r) => {
                let leader = r.order_leader.map_or("none".into(), |l| l.to_string());
                let standing = r.standing.to_string();
                let member = format!("{} ({:?})", r.member, r.order_role).to_lowercase();
                let _ = writeln!(
                    out,
                    "| {id} | {addr} | {up} | {} | {member} | {leader} | {} | {} | {} | {} | {} | {standing} |",
                    r.replica, r.order_term, r.applied_index, r.position, r.executed, r.state_transfers
                );
            }
            None => {
                let _ = writeln!(out, "| {id} | {addr} | {up} | - | - | - | - | - | - | - | - | - |");
            }
        }
    }
}
