//! A replicated store of your own in one file: a key-value [`StateMachine`], five members
//! over QUIC on loopback (mutual TLS, with certificates made on the spot), on the atomic
//! broadcast or on Raft.
//!
//! ```text
//! cargo run --release -p replication --example replicated_kv -- abcast
//! cargo run --release -p replication --example replicated_kv -- raft
//! ```
//!
//! It writes through every member, reads linearizably, stops one member (the Raft leader, or
//! atomic-broadcast member 0), writes and reads again through the others, and checks that
//! every member still up holds the same map and every acknowledged write. It exits with an
//! error if anything is off (`scripts/test` runs it both ways).
//!
//! What a program of its own needs: a state machine that is deterministic (no clock, no
//! randomness, no local configuration in `apply`), a [`RequestId`] per command (a retry with
//! the same id takes effect once), and one network and data directory per member. In a real
//! deployment each member is a process on its own host, started with the same code and the
//! peer table of every other member (see the README's "Deploying on several hosts").

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use replication::abcast::{AbcastConfig, AbcastLog};
use replication::raft::{RaftConfig, RaftLog};
use replication::{
    LogError, ReadConsistency, ReplicatedLog, RequestId, Role, SnapshotError, StateMachine,
};
use serde::{Deserialize, Serialize};
use transport::{Network, QuicNetwork};

const MEMBERS: u64 = 5;
const WRITES: u64 = 200;

/// The replicated state: a map from keys to values.
#[derive(Default)]
struct Kv {
    map: BTreeMap<String, String>,
}

/// What changes the state (proposed, ordered, applied on every member).
#[derive(Debug, Clone, Serialize, Deserialize)]
enum Command {
    Put { key: String, value: String },
    Delete { key: String },
}

/// What reads it (answered by one member, after a barrier for linearizable reads).
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Get(String);

impl StateMachine for Kv {
    type Command = Command;
    /// The value the command replaced.
    type Output = Option<String>;
    type Query = Get;
    type Answer = Option<String>;

    fn apply(&mut self, command: Command) -> Option<String> {
        match command {
            Command::Put { key, value } => self.map.insert(key, value),
            Command::Delete { key } => self.map.remove(&key),
        }
    }

    fn query(&self, query: &Get) -> Option<String> {
        self.map.get(&query.0).cloned()
    }

    fn snapshot(&self) -> Vec<u8> {
        postcard::to_stdvec(&self.map).expect("a map of strings encodes")
    }

    fn restore(&mut self, snapshot: &[u8]) -> Result<(), SnapshotError> {
        self.map = postcard::from_bytes(snapshot).map_err(|e| SnapshotError(e.to_string()))?;
        Ok(())
    }
}

/// One member: its log and its network.
struct Member {
    log: Log,
    network: Arc<QuicNetwork>,
}

enum Log {
    Raft(Arc<RaftLog<Kv>>),
    Abcast(Arc<AbcastLog<Kv>>),
}

impl Member {
    fn log(&self) -> &dyn ReplicatedLog<Kv> {
        match &self.log {
            Log::Raft(l) => l.as_ref(),
            Log::Abcast(l) => l.as_ref(),
        }
    }

    fn map(&self) -> BTreeMap<String, String> {
        match &self.log {
            Log::Raft(l) => l.with_state(|kv| kv.map.clone()),
            Log::Abcast(l) => l.with_state(|kv| kv.map.clone()),
        }
    }

    /// Stops the member as a crash would: its log stops and its network goes silent.
    fn stop(&self) {
        match &self.log {
            Log::Raft(l) => l.shutdown(),
            Log::Abcast(l) => l.shutdown(),
        }
        self.network.shutdown();
    }
}

/// Starts five members on loopback; must run inside a tokio runtime.
fn start(raft: bool, dir: &Path) -> Result<Vec<Member>, String> {
    // Certificates (one cluster CA, mutual TLS), a socket per member on a free port, and
    // each member's QUIC configuration with the whole group's peer table. On several hosts
    // each member gets its own certificate and the same table of host addresses instead
    // (`transport::certs`, `QuicConfig::new`).
    let names: Vec<String> = (0..MEMBERS).map(|i| format!("kv-{i}")).collect();
    let name_refs: Vec<&str> = names.iter().map(String::as_str).collect();
    let nodes =
        transport::loopback::group(&dir.join("certs"), &name_refs).map_err(|e| e.to_string())?;
    let mut members = Vec::new();
    for (i, (config, socket)) in nodes.into_iter().enumerate() {
        let id = i as u64;
        let network =
            Arc::new(QuicNetwork::bind_socket(config, socket).map_err(|e| e.to_string())?);
        let net: Arc<dyn Network> = network.clone();
        let data = dir.join(format!("data-{i}"));
        let log = if raft {
            let config = RaftConfig::new(id, (0..MEMBERS).collect(), &data);
            Log::Raft(RaftLog::start(config, net, Kv::default()).map_err(|e| e.to_string())?)
        } else {
            let config = AbcastConfig::new(id, MEMBERS);
            let log =
                AbcastLog::open(config, &data, net, Kv::default()).map_err(|e| e.to_string())?;
            Log::Abcast(Arc::new(log))
        };
        members.push(Member { log, network });
    }
    Ok(members)
}

/// Proposes until acknowledged (a leader is being elected, a member is being excluded...),
/// always with the same request id, so the command takes effect once however often it is
/// sent. Bounded: 300 attempts.
async fn put(member: &Member, id: RequestId, key: &str, value: &str) -> Result<(), LogError> {
    let mut last = LogError::Unavailable("not tried".into());
    for _ in 0..300 {
        let command = Command::Put {
            key: key.into(),
            value: value.into(),
        };
        match member.log().propose(id, command).await {
            Ok(_) => return Ok(()),
            Err(e @ LogError::Unavailable(_)) => last = e,
            Err(e) => return Err(e),
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    Err(last)
}

/// Writes `WRITES` keys through the members in `through`, in turn; returns each write's
/// latency.
async fn write_all(
    members: &[Member],
    through: &[usize],
    round: &str,
    seq: &mut u64,
) -> Result<Vec<Duration>, String> {
    let mut latencies = Vec::new();
    for k in 0..WRITES {
        let member = &members[through[k as usize % through.len()]];
        *seq += 1;
        let id = RequestId {
            client: 1,
            seq: *seq,
        };
        let started = Instant::now();
        put(member, id, &format!("{round}-{k}"), &format!("value {k}"))
            .await
            .map_err(|e| format!("write {round}-{k}: {e}"))?;
        latencies.push(started.elapsed());
    }
    Ok(latencies)
}

fn median(mut d: Vec<Duration>) -> Duration {
    d.sort();
    d[d.len() / 2]
}

async fn run(raft: bool) -> Result<(), String> {
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let members = start(raft, dir.path())?;
    let all: Vec<usize> = (0..members.len()).collect();
    let mut seq = 0;
    let first = write_all(&members, &all, "first", &mut seq).await?;
    println!(
        "{} writes through all five members: median {:?} (the first ones wait for the group to form)",
        WRITES,
        median(first)
    );

    // Stop one member: the Raft leader, or atomic-broadcast member 0.
    let mut victim = if raft { None } else { Some(0) };
    for _ in 0..200 {
        if victim.is_some() {
            break;
        }
        victim = all
            .iter()
            .copied()
            .find(|i| members[*i].log().status().role == Role::Leader);
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let victim = victim.ok_or("no Raft leader within 2 s")?;
    members[victim].stop();
    println!("stopped member {victim}");
    let live: Vec<usize> = all.iter().copied().filter(|i| *i != victim).collect();
    let second = write_all(&members, &live, "second", &mut seq).await?;
    let longest = second.iter().max().copied().unwrap_or_default();
    println!(
        "{} writes through the other four: median {:?}, longest {:?} (the first one waits \
         for {})",
        WRITES,
        median(second),
        longest,
        if raft {
            "a new leader"
        } else {
            "the others to exclude the stopped member"
        }
    );

    // Every acknowledged write is there, read linearizably through every member still up,
    // and the members hold the same map.
    for &i in &live {
        for key in ["first-0", "first-199", "second-0", "second-199"] {
            let answer = members[i]
                .log()
                .read(Get(key.into()), ReadConsistency::Linearizable)
                .await
                .map_err(|e| format!("read {key} at member {i}: {e}"))?;
            if answer.is_none() {
                return Err(format!("member {i} lacks {key}"));
            }
        }
    }
    let reference = members[live[0]].map();
    if reference.len() != 2 * WRITES as usize {
        return Err(format!(
            "{} keys instead of {}",
            reference.len(),
            2 * WRITES
        ));
    }
    for &i in &live[1..] {
        let mut same = false;
        // A member answers a read once it has applied everything before it; the others
        // catch up within a few milliseconds (bounded wait).
        for _ in 0..200 {
            if members[i].map() == reference {
                same = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        if !same {
            return Err(format!("member {i} holds a different map"));
        }
    }
    println!(
        "the four members still up hold the same {} keys",
        reference.len()
    );
    for m in &members {
        m.stop();
    }
    Ok(())
}

fn main() -> Result<(), String> {
    let raft = match std::env::args().nth(1).as_deref() {
        Some("raft") => true,
        Some("abcast") | None => false,
        Some(other) => return Err(format!("unknown log {other:?}: say abcast or raft")),
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    println!(
        "a replicated key-value store on {}, five members over QUIC on 127.0.0.1",
        if raft { "Raft" } else { "the atomic broadcast" }
    );
    runtime.block_on(run(raft))
}
