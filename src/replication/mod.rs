//! Replication: shipping the change log to replica nodes, with Kafka's semantics
//! (offsets, acks, the in-sync set, the high watermark, epochs), and snapshots for copies
//! the log alone cannot bring up to date.

mod ballot;
mod candidacy;
mod canvass;
mod channel;
mod copy;
mod elector;
mod hosted;
mod inspect;
mod isr;
mod key;
mod lease;
mod node;
mod primary;
mod promote;
mod protocol;
mod rejoin;
mod resync;
mod session;
mod stream;
mod untimed;
mod vote;
mod voting;

pub use ballot::{BALLOT_FILE, BallotBox, VoteError, VotesStatus};
pub use candidacy::{ElectionStatus, LastElection};
pub use channel::{Channel, ChannelError, MESSAGE_MAX, Receiving};
pub use copy::{CopyStatus, GATE_FILE, inspect as inspect_copy, load_key_file, load_peers};
pub use elector::{ELECTED_CONFIG, ELECTION_FILE, Elected, OnElected, load_election};
pub use key::VolumeKey;
pub use lease::{LeaseKeeper, LeaseSetup, LeaseStatus};
pub use node::{
    HostedStatus, NODE_DIR, NodeError, NodeStatus, promote_volume, serve as serve_node,
};
pub use primary::{
    DIVERGED_ADVICE, ReplicaStatus, Replication, ReplicationError, ReplicationStatus,
};
pub use promote::{PeerPosition, PromoteError, Promotion, Reach, peer_positions, promoted_at};
pub use protocol::{
    AutoFailover, Peers, ProtocolError, Stuck, ToNode, ToPrimary, decode as decode_message,
    encode as encode_message, record_hash, record_hash_at,
};
pub use rejoin::{RejoinError, Rejoined, rejoin};
pub use vote::{Ballot, Refusal, Standing, Voter};
