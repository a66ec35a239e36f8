//! Cluster-wide requests: topics (create, delete, list, describe) and the
//! cluster status, sent to any bootstrap broker and retried by the retry
//! policy (NotController hints followed, no controller yet waited out).

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use wire::{
    ClusterStatusRequest, ClusterStatusResponse, CreateTopicRequest, DeleteTopicRequest,
    DescribeTopicRequest, DescribeTopicResponse, ErrorCode, Message, MetadataRequest,
    MetadataResponse, TopicMetadata,
};

use crate::connection::{resolve, Connection};
use crate::retry::{call, RetryPolicy};
use crate::{ClientConfig, ClientError, PipelineError};

/// An admin client: each call has `timeout` in all, retries included.
#[derive(Debug, Clone)]
pub struct Admin {
    brokers: Vec<SocketAddr>,
    timeout: Duration,
    policy: RetryPolicy,
}

impl Admin {
    /// Calls to `brokers`, each within `timeout` (also the connect and
    /// read timeout of each attempt).
    pub fn new(brokers: Vec<SocketAddr>, timeout: Duration) -> Admin {
        let timeout = timeout.max(Duration::from_millis(1));
        Admin {
            policy: ClientConfig::new(Vec::new()).retry_policy(),
            brokers,
            timeout,
        }
    }

    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// The broker's deadline for a request that waits on the cluster
    /// (create, delete): the call's timeout, in ms.
    pub fn timeout_ms(&self) -> u32 {
        self.timeout.as_millis().min(u128::from(u32::MAX)) as u32
    }

    /// Sends `msg` to the cluster: any bootstrap broker first, then wherever
    /// a NotController (or NotLeader) hint points; retryable answers and
    /// broken connections are retried until the timeout.
    pub fn request(&self, msg: &Message) -> Result<Message, ClientError> {
        let timeout = self.timeout;
        call(
            &self.policy,
            Instant::now() + timeout,
            None,
            || None,
            |target| {
                let mut c = match target {
                    Some(a) => Connection::connect(a, timeout)?,
                    None => Connection::connect_any(&self.brokers, timeout)?,
                };
                c.request(msg)
            },
        )
    }

    pub fn create_topic(&self, req: CreateTopicRequest) -> Result<TopicMetadata, ClientError> {
        match self.request(&req.into())? {
            Message::CreateTopicResponse(r) => Ok(r.topic),
            other => Err(unexpected(&other)),
        }
    }

    /// Deletes a topic; returns the name the broker confirmed.
    pub fn delete_topic(&self, name: &str) -> Result<String, ClientError> {
        let req = DeleteTopicRequest {
            name: name.to_owned(),
            timeout_ms: self.timeout_ms(),
        };
        match self.request(&req.into())? {
            Message::DeleteTopicResponse(r) => Ok(r.name),
            other => Err(unexpected(&other)),
        }
    }

    /// Metadata of the named topics (None: every topic).
    pub fn metadata(&self, topics: Option<Vec<String>>) -> Result<MetadataResponse, ClientError> {
        match self.request(&MetadataRequest { topics }.into())? {
            Message::MetadataResponse(r) => Ok(r),
            other => Err(unexpected(&other)),
        }
    }

    pub fn describe_topic(&self, name: &str) -> Result<DescribeTopicResponse, ClientError> {
        let req = DescribeTopicRequest {
            name: name.to_owned(),
        };
        match self.request(&req.into())? {
            Message::DescribeTopicResponse(r) => Ok(r),
            other => Err(unexpected(&other)),
        }
    }

    /// The cluster status with every partition: each broker reports the
    /// partitions it leads (and those with no leader yet), so every live
    /// broker is asked (one attempt each, a broker that does not answer is
    /// left out) and the answers merged, one entry per partition (a led
    /// one before a leaderless one), sorted by topic and partition.
    pub fn cluster_status(&self) -> Result<ClusterStatusResponse, ClientError> {
        let req: Message = ClusterStatusRequest {
            include_partitions: true,
        }
        .into();
        let mut s = match self.request(&req)? {
            Message::ClusterStatusResponse(s) => s,
            other => return Err(unexpected(&other)),
        };
        for b in s.brokers.clone().iter().filter(|b| b.alive) {
            let Some(addr) = b
                .endpoints
                .first()
                .and_then(|ep| resolve(&ep.host, ep.port))
            else {
                continue;
            };
            let Ok(mut c) = Connection::connect(addr, self.timeout) else {
                continue;
            };
            if let Ok(Message::ClusterStatusResponse(other)) = c.request(&req) {
                s.partitions.extend(other.partitions);
            }
        }
        s.partitions.sort_by(|a, b| {
            (&a.topic, a.partition, a.leader.is_none()).cmp(&(
                &b.topic,
                b.partition,
                b.leader.is_none(),
            ))
        });
        s.partitions.dedup_by(|later, first| {
            later.topic == first.topic && later.partition == first.partition
        });
        Ok(s)
    }

    /// Creates the topic, or checks that an existing one has as many
    /// partitions as `req` asks for.
    pub fn ensure_topic(&self, req: CreateTopicRequest) -> Result<(), PipelineError> {
        let (name, partitions) = (req.name.clone(), req.partitions);
        match self.create_topic(req) {
            Ok(_) => Ok(()),
            Err(ClientError::Broker {
                code: ErrorCode::TopicAlreadyExists,
                ..
            }) => {
                let d = self.describe_topic(&name)?;
                let have = d.topic.partitions.len() as u32;
                if have != partitions {
                    return Err(PipelineError::TopicMismatch {
                        topic: name,
                        have,
                        want: partitions,
                    });
                }
                Ok(())
            }
            Err(e) => Err(e.into()),
        }
    }
}

fn unexpected(msg: &Message) -> ClientError {
    ClientError::Unexpected(msg.kind().name())
}
