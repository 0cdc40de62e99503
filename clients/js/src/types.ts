// The wire contract's shapes (PROTOCOL.md v1): JSON bodies of the HTTP API and
// the data of WebSocket frames, camelCase exactly as they travel.

export type ConnectionState = "idle" | "connecting" | "open" | "reconnecting" | "closed";

export type ErrorCode =
  | "bad_request"
  | "unauthorized"
  | "forbidden"
  | "not_found"
  | "conflict"
  | "payload_too_large"
  | "rate_limited"
  | "unavailable"
  | "internal";

// ---- HTTP JSON ------------------------------------------------------------

export interface Sender {
  id: string;
  name: string;
  avatar: string | null;
}

export interface Message {
  id: string;
  communityId: string;
  /** The community's sequence number of the message's creation. */
  seq: number;
  sender: Sender;
  content: string;
  mentions: string[];
  /** RFC 3339 UTC with milliseconds. */
  createdAt: string;
}

export interface Notification {
  id: string;
  userId: string;
  type: string;
  title: string;
  message: string;
  data: Record<string, unknown> | null;
  read: boolean;
  createdAt: string;
}

export interface CommunityJson {
  id: string;
  name: string;
  isPublic: boolean;
  createdBy: string;
  createdAt: string;
  headSeq: number;
}

export interface Member {
  userId: string;
  name: string;
  avatar: string | null;
  role: "owner" | "member";
}

export interface MembersPage {
  members: Member[];
  nextAfter: string | null;
}

/** `GET /api/messages-realtime`: newest first with `before`, oldest first with `after`. */
export interface HistoryPage {
  messages: Message[];
  nextBefore?: number | null;
  nextAfter?: number | null;
}

export interface NotificationsPage {
  notifications: Notification[];
  unreadCount: number;
  nextBefore: string | null;
}

export interface SocketStatus {
  status: "ok" | "degraded";
  gateways: { id: string; connections: number; startedAt: string }[];
  connections: number;
}

export interface ErrorEnvelope {
  error: { code: ErrorCode; message: string };
}

// ---- WebSocket frames -------------------------------------------------------

/** client → server; with a `ref` the server answers exactly once (ack or error). */
export interface ClientFrame {
  type: string;
  ref?: number;
  data: object;
}

/** server → client. `ref` and `error` only on ack / error / pong. */
export interface ServerFrame {
  type: string;
  ref?: number;
  data?: unknown;
  error?: { code: ErrorCode; message: string };
}

export interface ReadyData {
  userId: string;
  connectionId: string;
  gatewayId: string;
  heartbeatMs: number;
}

export interface JoinAck {
  communityId: string;
  headSeq: number;
  online: string[];
  recovered: boolean;
  missed: number;
}

export interface SubscribeNotificationsAck {
  unreadCount: number;
}

export interface NewMessageData {
  message: Message;
}

export interface MessageDeletedData {
  communityId: string;
  messageId: string;
  seq: number;
}

export interface UserJoinedData {
  communityId: string;
  userId: string;
  name: string;
}

export interface UserLeftData {
  communityId: string;
  userId: string;
}

export interface UserTypingData {
  communityId: string;
  userId: string;
  name: string;
  isTyping: boolean;
}

export interface NotificationData {
  notification: Notification;
}

export interface MembershipRevokedData {
  communityId: string;
}

export interface ReconnectData {
  reason: string;
  afterMs: number;
}

/** Close codes of the contract. */
export const CloseCode = {
  Normal: 1000,
  Policy: 1008,
  TooBig: 1009,
  Internal: 1011,
  Draining: 1012,
  RateLimited: 4008,
  SlowConsumer: 4009,
} as const;
