//! The sentinel port: Redis Sentinel's discovery commands for the `kv` service, one
//! [`Sentinel`] per connection, answered from the control plane's record as this node knows
//! it. A subscribed connection is sent `+switch-master` as soon as the record names a new
//! primary.

use crate::client_server::{Answering, Ended};
use crate::redis_port::{RedisService, Stream, Watched, flush, patience, sleep_or_never};
use nonstop_kv::resp::{Decoder, Limits};
use nonstop_kv::sentinel::Sentinel;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::{Duration, Instant, timeout, timeout_at};

/// How long a discovery request may wait for a failover to name a new primary, while this
/// node believes the primary down ([`Sentinel::asks_for_a_down_primary`]): a promotion after a
/// crash takes a few milliseconds, and a client told the new primary at once skips its retry
/// delay. Well under the 100 ms socket timeout that redis-py's documentation gives its
/// Sentinel clients, so that a sentinel which waits is not taken for a dead one.
const FAILOVER_WAIT: Duration = Duration::from_millis(50);

/// Serves one sentinel connection until it closes, quits, or sends what cannot be read.
pub(crate) async fn serve<S: Stream>(mut stream: S, answering: &Answering, redis: &RedisService) -> Result<(), Ended> {
    let limits = answering.limits;
    let mut watched = Watched::new(redis.serving(answering)?, redis);
    let mut sentinel =
        Sentinel::new(answering.counters.number_connection(), redis.node.0).requiring(redis.password.clone());
    // Sentinel requests are short: a small limit keeps what one connection may buffer small.
    let mut decoder = Decoder::new(Limits { max_bulk_len: 64 << 10, max_arguments: 1024, max_request_bytes: 1 << 20 });
    let mut input = vec![0u8; 4096];
    let mut output = Vec::new();
    let mut begun = None;
    // The topology a discovery request last waited out without a change: the next ones asked
    // under it are answered at once, so a pipeline of them waits once, not once each.
    let mut waited_out: Option<nonstop_kv::topology::Topology> = None;
    let refresh = |watched: &mut Watched, sentinel: &Sentinel, output: &mut Vec<u8>| {
        if let Some(before) = watched.refresh(redis) {
            for message in sentinel.switched(&before, &watched.topology) {
                message.encode(sentinel.protocol(), output);
            }
        }
    };
    loop {
        refresh(&mut watched, &sentinel, &mut output);
        loop {
            match decoder.next_request() {
                Ok(Some(request)) => {
                    if Sentinel::asks_for_a_down_primary(&request, &watched.topology)
                        && waited_out.as_ref() != Some(&watched.topology)
                    {
                        flush(&mut stream, &mut output, limits.message).await?;
                        let until = Instant::now() + FAILOVER_WAIT;
                        while Sentinel::asks_for_a_down_primary(&request, &watched.topology) {
                            if timeout_at(until, watched.changed()).await.is_err() {
                                waited_out = Some(watched.topology.clone());
                                break;
                            }
                            refresh(&mut watched, &sentinel, &mut output);
                        }
                    }
                    let answer = sentinel.handle(&request, &watched.topology);
                    for reply in &answer.replies {
                        reply.encode(sentinel.protocol(), &mut output);
                    }
                    if answer.close {
                        let _ = timeout(limits.message, stream.write_all(&output)).await;
                        return Ok(());
                    }
                }
                Ok(None) => break,
                Err(error) => {
                    error.reply().encode(sentinel.protocol(), &mut output);
                    let _ = timeout(limits.message, stream.write_all(&output)).await;
                    return Ok(());
                }
            }
        }
        flush(&mut stream, &mut output, limits.message).await?;
        // A subscriber waits for messages as long as it likes, as with Redis; any other
        // connection is closed after the ports' idle time, if they have one.
        let idle = if sentinel.subscribed() { None } else { redis.idle };
        let (patience, why) = patience(&decoder, &mut begun, idle, limits.message);
        let read = tokio::select! {
            read = stream.read(&mut input) => read?,
            () = watched.changed(), if sentinel.subscribed() => continue,
            () = sleep_or_never(patience) => return Err(why),
        };
        if read == 0 {
            return Ok(());
        }
        decoder.push(&input[..read]);
    }
}
