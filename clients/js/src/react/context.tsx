import { createContext, useContext, useInsertionEffect, type ReactNode } from "react";
import type { ChorusClient } from "../index.js";
import { injectChorusStyles } from "./styles.js";

const ChorusContext = createContext<ChorusClient | null>(null);

export interface ChorusProviderProps {
  client: ChorusClient;
  children?: ReactNode;
  /**
   * Inject the default `chorus-` stylesheet into `document.head` (once per document).
   * Pass false to bring your own CSS (the text is exported as `chorusCss`).
   */
  injectStyles?: boolean;
}

/** Makes a ChorusClient available to the hooks and components below it. */
export function ChorusProvider({ client, children, injectStyles = true }: ChorusProviderProps) {
  useInsertionEffect(() => {
    if (injectStyles) injectChorusStyles();
  }, [injectStyles]);
  return <ChorusContext.Provider value={client}>{children}</ChorusContext.Provider>;
}

/** The ChorusClient of the nearest ChorusProvider. */
export function useChorus(): ChorusClient {
  const client = useContext(ChorusContext);
  if (!client) throw new Error("useChorus: no ChorusProvider above this component");
  return client;
}
