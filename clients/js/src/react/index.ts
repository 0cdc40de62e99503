/**
 * React bindings of the Chorus client: `@chorus/client/react`.
 *
 *   <ChorusProvider client={client}>
 *     <NotificationCenter />
 *     <RealtimeChat communityId={id} title="General" />
 *   </ChorusProvider>
 */
export { ChorusProvider, useChorus } from "./context.js";
export type { ChorusProviderProps } from "./context.js";
export {
  useConnectionState,
  useUserId,
  useCommunity,
  useNotifications,
  retainCommunity,
  communityRefCount,
} from "./hooks.js";
export type { UseCommunityResult, UseNotificationsResult } from "./hooks.js";
export { RealtimeChat, extractMentions, typingText } from "./RealtimeChat.js";
export type { RealtimeChatProps } from "./RealtimeChat.js";
export { NotificationCenter } from "./NotificationCenter.js";
export type { NotificationCenterProps } from "./NotificationCenter.js";
export { ConnectionDot, Avatar, initials } from "./parts.js";
export { chorusCss, injectChorusStyles } from "./styles.js";
