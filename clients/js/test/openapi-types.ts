// Compile-time check (run by `npm run typecheck`) of the SDK's hand-written
// wire types against the types generated from the API's OpenAPI document
// (src/generated/openapi.ts, from api/openapi.json, from the Rust code):
// everything the server sends fits what the SDK reads, and everything the
// SDK sends fits what the server takes. A change on either side that
// breaks this fails the typecheck, naming the pair.

import type * as Wire from "../src/generated/openapi.js";
import type { ChorusApi } from "../src/api.js";
import type * as Sdk from "../src/types.js";

/** `true` when A is assignable to B, else a readable error type. */
type Fits<A, B> = [A] extends [B] ? true : { error: "does not fit"; from: A; to: B };
/** Both ways: the same shape. */
type Same<A, B> = Fits<A, B> extends true ? Fits<B, A> : Fits<A, B>;
type Check<T extends true> = T;

// What the server sends (HTTP responses, frame payloads) is what the SDK reads.
export type ServerToSdk = [
  Check<Same<Wire.ErrorCode, Sdk.ErrorCode>>,
  Check<Same<Wire.Sender, Sdk.Sender>>,
  Check<Same<Wire.Message, Sdk.Message>>,
  Check<Fits<Wire.Notification, Sdk.Notification>>,
  Check<Same<Wire.Community, Sdk.CommunityJson>>,
  Check<Same<Wire.Member, Sdk.Member>>,
  Check<Same<Wire.MemberList, Sdk.MembersPage>>,
  Check<Same<Wire.MessagePage, Sdk.HistoryPage>>,
  Check<Fits<Wire.NotificationPage, Sdk.NotificationsPage>>,
  Check<Same<Wire.SocketStatus, Sdk.SocketStatus>>,
  Check<Same<Wire.ErrorBody, Sdk.ErrorEnvelope>>,
  Check<Same<Wire.Ready, Sdk.ReadyData>>,
  Check<Same<Wire.JoinAck, Sdk.JoinAck>>,
  Check<Same<Wire.MessageData, Sdk.NewMessageData>>,
  Check<Same<Wire.MessageDeleted, Sdk.MessageDeletedData>>,
  Check<Same<Wire.UserJoined, Sdk.UserJoinedData>>,
  Check<Same<Wire.UserLeft, Sdk.UserLeftData>>,
  Check<Same<Wire.UserTyping, Sdk.UserTypingData>>,
  Check<Fits<Wire.NotificationData, Sdk.NotificationData>>,
  Check<Same<Wire.MembershipRevoked, Sdk.MembershipRevokedData>>,
  Check<Same<Wire.Reconnect, Sdk.ReconnectData>>,
  Check<Fits<Wire.ReadAll, Awaited<ReturnType<ChorusApi["markAllNotificationsRead"]>>>>,
];

// What the SDK sends is what the server takes.
export type SdkToServer = [
  Check<Fits<Parameters<ChorusApi["broadcastNotification"]>[0], Wire.CreateNotification>>,
  Check<Fits<{ communityId: string; content: string; mentions?: string[] }, Wire.SendMessage>>,
  Check<Fits<{ name: string; isPublic?: boolean }, Wire.CreateCommunity>>,
  Check<Fits<{ userId: string }, Wire.AddMember>>,
  Check<Fits<{ communityId: string; lastSeq?: number }, Wire.JoinCommunity>>,
  Check<Fits<{ communityId: string; isTyping: boolean }, Wire.Typing>>,
];
