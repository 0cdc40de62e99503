// @chorus/client: the public entry point.

export { ChorusClient } from "./client.js";
export type { ChorusOptions, ClientEvents } from "./client.js";
export { Community, TYPING_EXPIRY_MS } from "./community.js";
export type { CommunitySnapshot, CommunityEvents } from "./community.js";
export { Notifications } from "./notifications.js";
export type { NotificationsSnapshot, NotificationsEvents } from "./notifications.js";
export { ChorusApi, errorFromResponse } from "./api.js";
export type { ApiOptions } from "./api.js";
export { ChorusError, ChorusTimeoutError, ChorusNetworkError } from "./errors.js";
export { Backoff, backoffCap, DEFAULT_BACKOFF } from "./backoff.js";
export type { BackoffOptions } from "./backoff.js";
export { jsonCodec, msgpackCodec, MSGPACK_SUBPROTOCOL, JSON_SUBPROTOCOL } from "./codec.js";
export type { Codec } from "./codec.js";
export type { ReconnectInfo, WebSocketLike } from "./connection.js";
export type { TokenProvider, TokenReason } from "./token.js";
export * from "./types.js";
