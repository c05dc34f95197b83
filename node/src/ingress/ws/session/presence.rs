//! A connection following users' presence: `presence_subscribe` and the events owed.

use switchboard_proto::client::{ErrorCode, ServerReply};
use tokio_tungstenite::tungstenite::Message;

use super::super::follow::{Follow, FollowError, Followed, ShardedFollow};
use super::super::state::{End, error};
use super::Session;
use crate::ingress::ws::Stream;

impl<S: Stream> Session<S> {
    /// `presence_subscribe`: `presence_subscribed`, then the user's reset (or what came
    /// after `since`), then its events as they are committed.
    pub(super) async fn presence_subscribe(
        &mut self,
        user: Option<String>,
        since: Option<String>,
        id: Option<u64>,
    ) -> Result<(), End> {
        let user = user.unwrap_or_else(|| self.identity.user.clone());
        if !self.ingress.hub.may_query_presence(self.outlet.id, &user) {
            let reply = error(
                ErrorCode::Forbidden,
                "this token may only follow its own presence",
                id,
            );
            return self.reply(&reply).await;
        }
        let replica = &self.ingress.replica;
        let follows = &self.ingress.follows;
        let follow = self.follow.get_or_insert_with(|| {
            Box::new(match &self.ingress.presence_reads.shards {
                Some(shards) => {
                    Followed::sharded(ShardedFollow::new(shards.clone()), follows.clone())
                }
                None => Followed::one(Follow::new(replica), follows.clone()),
            })
        });
        let (frames, added) = follow.add(replica, user.clone(), since.as_deref()).await;
        if follow.is_empty() {
            self.follow = None;
        }
        let frames = frames
            .into_iter()
            .map(|f| Message::Text(f.into()))
            .collect::<Vec<_>>();
        if let Err(e) = added {
            self.write_frames(frames).await?;
            let (code, text) = match e {
                FollowError::TooMany(text) => (ErrorCode::TooManyGroups, text),
                FollowError::BadSince(text) => (ErrorCode::BadRequest, text),
                FollowError::Unavailable(text) => (ErrorCode::Unavailable, text),
            };
            return self.reply(&error(code, &text, id)).await;
        }
        let reply = ServerReply::PresenceSubscribed { user, id };
        self.reply(&reply).await?;
        self.write_frames(frames).await
    }

    /// Writes the presence events owed to the users this connection follows.
    pub(super) async fn write_presence(&mut self) -> Result<(), End> {
        let Some(follow) = self.follow.as_mut() else {
            return Ok(());
        };
        let frames = follow.pending(&self.ingress.replica).await;
        let frames = frames
            .into_iter()
            .map(|f| Message::Text(f.into()))
            .collect::<Vec<_>>();
        self.write_frames(frames).await
    }
}
