/**
 * React bindings of the Chorus client: `@chorus/client/react`.
 *
 *   <ChorusProvider client={client}>
 *     <NotificationCenter />
 *     <RealtimeChat communityId={id} title="General" />
 *   </ChorusProvider>
 */
export { ChorusProvider, useChorus } from "./context";
export type { ChorusProviderProps } from "./context";
export {
  useConnectionState,
  useUserId,
  useCommunity,
  useNotifications,
  retainCommunity,
  communityRefCount,
} from "./hooks";
export type { UseCommunityResult, UseNotificationsResult } from "./hooks";
export { RealtimeChat, extractMentions, typingText } from "./RealtimeChat";
export type { RealtimeChatProps } from "./RealtimeChat";
export { NotificationCenter } from "./NotificationCenter";
export type { NotificationCenterProps } from "./NotificationCenter";
export { ConnectionDot, Avatar, initials } from "./parts";
export { chorusCss, injectChorusStyles } from "./styles";
