// @vitest-environment jsdom
// Auto-scroll: follow the newest message unless the user scrolled up. jsdom has
// no layout, so the log's scroll geometry is simulated.
import { act, cleanup, fireEvent, render, screen } from "@testing-library/react";
import { afterEach, describe, expect, it } from "vitest";
import { ChorusProvider, RealtimeChat } from "../../src/react/index";
import { FakeClient, message } from "./fake";

const ID = "33333333-3333-4333-8333-333333333333";
afterEach(cleanup);

function geometry(el: HTMLElement) {
  let top = 0;
  const g = { clientHeight: 100, rowHeight: 40, get scrollHeight() { return el.querySelectorAll('[data-testid="message"]').length * g.rowHeight; } };
  Object.defineProperty(el, "clientHeight", { configurable: true, get: () => g.clientHeight });
  Object.defineProperty(el, "scrollHeight", { configurable: true, get: () => g.scrollHeight });
  Object.defineProperty(el, "scrollTop", {
    configurable: true,
    get: () => top,
    set: (v: number) => {
      top = Math.max(0, Math.min(v, Math.max(0, g.scrollHeight - g.clientHeight)));
    },
  });
  return g;
}

describe("RealtimeChat scrolling", () => {
  it("follows new messages at the bottom, keeps the view when scrolled up, and offers a jump", async () => {
    const client = new FakeClient();
    const community = client.community(ID);
    render(
      <ChorusProvider client={client.asClient}>
        <RealtimeChat communityId={ID} />
      </ChorusProvider>,
    );
    await act(async () => {});
    const log = screen.getByRole("log", { name: "Messages" });
    const g = geometry(log);
    const bottom = () => g.scrollHeight - g.clientHeight;

    act(() => {
      for (let i = 0; i < 10; i++) community.receive({ id: "bob", name: "Bob" }, `m${i}`);
    });
    act(() => community.receive({ id: "bob", name: "Bob" }, "m10"));
    expect(log.scrollTop).toBe(bottom());

    // the user scrolls up: new messages do not move the view
    log.scrollTop = 0;
    fireEvent.scroll(log);
    act(() => community.receive({ id: "bob", name: "Bob" }, "m11"));
    expect(log.scrollTop).toBe(0);
    const jump = screen.getByRole("button", { name: "New messages ↓" });

    fireEvent.click(jump);
    expect(log.scrollTop).toBe(bottom());
    expect(screen.queryByRole("button", { name: "New messages ↓" })).toBeNull();

    // scrolled up again, but the user's own message brings the view down
    log.scrollTop = 0;
    fireEvent.scroll(log);
    act(() => community.receive({ id: "me", name: "Me" }, "mine"));
    expect(log.scrollTop).toBe(bottom());
  });

  it("Load older messages keeps the same message in view", async () => {
    const client = new FakeClient();
    const community = client.community(ID);
    render(
      <ChorusProvider client={client.asClient}>
        <RealtimeChat communityId={ID} />
      </ChorusProvider>,
    );
    await act(async () => {});
    const log = screen.getByRole("log", { name: "Messages" });
    const g = geometry(log);
    act(() => {
      const recent = Array.from({ length: 10 }, (_, i) => message(ID, 11 + i, { id: "bob", name: "Bob" }, `m${11 + i}`));
      community.set({ messages: recent, hasOlder: true, headSeq: 20 });
    });
    community.loadOlder.mockImplementation(async () => {
      const older = Array.from({ length: 10 }, (_, i) => message(ID, 1 + i, { id: "bob", name: "Bob" }, `m${1 + i}`));
      community.set({ messages: [...older, ...community.getSnapshot().messages], hasOlder: false });
    });
    log.scrollTop = 0;
    fireEvent.scroll(log);
    const heightBefore = g.scrollHeight;
    await act(async () => {
      fireEvent.click(screen.getByRole("button", { name: "Load older messages" }));
    });
    expect(community.loadOlder).toHaveBeenCalledTimes(1);
    expect(screen.getAllByTestId("message")).toHaveLength(20);
    // the view moved down by exactly the height added above it
    expect(log.scrollTop).toBe(g.scrollHeight - heightBefore);
    expect(screen.queryByRole("button", { name: "Load older messages" })).toBeNull();
  });
});
