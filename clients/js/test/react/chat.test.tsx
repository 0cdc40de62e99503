// @vitest-environment jsdom
import { act, cleanup, fireEvent, render, screen, within } from "@testing-library/react";
import { afterEach, beforeEach, describe, expect, it, vi } from "vitest";
import { ChorusProvider, RealtimeChat, extractMentions, typingText } from "../../src/react/index";
import { FakeClient } from "./fake";

const ID = "11111111-1111-4111-8111-111111111111";

function setup(props: Partial<Parameters<typeof RealtimeChat>[0]> = {}) {
  const client = new FakeClient();
  const community = client.community(ID);
  const utils = render(
    <ChorusProvider client={client.asClient}>
      <RealtimeChat communityId={ID} title="General" {...props} />
    </ChorusProvider>,
  );
  return { client, community, ...utils };
}

afterEach(() => {
  cleanup();
  vi.useRealTimers();
});

describe("RealtimeChat", () => {
  it("joins on mount and lists messages with sender names, avatars and the DOM hooks", async () => {
    const { community } = setup();
    expect(community.join).toHaveBeenCalledTimes(1);
    await act(async () => {});
    act(() => {
      community.receive({ id: "bob", name: "Bob Marley" }, "hello there");
      community.receive({ id: "carol", name: "Carol", avatar: "https://example.test/c.png" }, "hi bob");
    });
    const log = screen.getByRole("log", { name: "Messages" });
    const items = within(log).getAllByTestId("message");
    expect(items).toHaveLength(2);
    expect(items[0]!.getAttribute("data-seq")).toBe("1");
    expect(items[0]!.getAttribute("data-message-id")).toBe(community.getSnapshot().messages[0]!.id);
    expect(items[0]!.textContent).toContain("Bob Marley");
    expect(items[0]!.textContent).toContain("hello there");
    expect(items[0]!.textContent).toContain("BM"); // initials avatar
    expect(items[1]!.querySelector("img")!.getAttribute("src")).toBe("https://example.test/c.png");
  });

  it("sends setTyping(true) on input and setTyping(false) after 1 s idle", () => {
    vi.useFakeTimers();
    const { community } = setup();
    const input = screen.getByRole("textbox", { name: "Message" });

    fireEvent.change(input, { target: { value: "h" } });
    expect(community.setTyping).toHaveBeenCalledTimes(1);
    expect(community.setTyping).toHaveBeenLastCalledWith(true);

    act(() => vi.advanceTimersByTime(600));
    fireEvent.change(input, { target: { value: "he" } });
    // Still typing: no second `true` so soon, and the idle timer starts over.
    expect(community.setTyping).toHaveBeenCalledTimes(1);

    act(() => vi.advanceTimersByTime(999));
    expect(community.setTyping).toHaveBeenCalledTimes(1);
    act(() => vi.advanceTimersByTime(1));
    expect(community.setTyping).toHaveBeenCalledTimes(2);
    expect(community.setTyping).toHaveBeenLastCalledWith(false);

    // Nothing more while idle.
    act(() => vi.advanceTimersByTime(5000));
    expect(community.setTyping).toHaveBeenCalledTimes(2);

    // Typing again starts a new `true`.
    fireEvent.change(input, { target: { value: "hel" } });
    expect(community.setTyping).toHaveBeenCalledTimes(3);
    expect(community.setTyping).toHaveBeenLastCalledWith(true);
  });

  it("re-sends typing while the user keeps typing, so receivers do not expire it", () => {
    vi.useFakeTimers();
    const { community } = setup();
    const input = screen.getByRole("textbox", { name: "Message" });
    let text = "";
    for (let i = 0; i < 14; i++) {
      text += "a";
      fireEvent.change(input, { target: { value: text } });
      act(() => vi.advanceTimersByTime(500));
    }
    const calls = community.setTyping.mock.calls.map((c) => c[0]);
    expect(calls.every((c) => c === true)).toBe(true);
    expect(calls.length).toBeGreaterThanOrEqual(2);
    expect(calls.length).toBeLessThanOrEqual(4);
  });

  it("stops typing on blur and when the text is cleared", () => {
    vi.useFakeTimers();
    const { community } = setup();
    const input = screen.getByRole("textbox", { name: "Message" });
    fireEvent.change(input, { target: { value: "x" } });
    fireEvent.blur(input);
    expect(community.setTyping.mock.calls.map((c) => c[0])).toEqual([true, false]);
    fireEvent.change(input, { target: { value: "xy" } });
    fireEvent.change(input, { target: { value: "" } });
    expect(community.setTyping.mock.calls.map((c) => c[0])).toEqual([true, false, true, false]);
    act(() => vi.advanceTimersByTime(2000));
    expect(community.setTyping).toHaveBeenCalledTimes(4);
  });

  it("Enter sends (with @mentions) and stops typing; Shift+Enter does not send", async () => {
    const { community } = setup();
    const input = screen.getByRole("textbox", { name: "Message" }) as HTMLTextAreaElement;
    fireEvent.change(input, { target: { value: "line one" } });
    fireEvent.keyDown(input, { key: "Enter", shiftKey: true });
    expect(community.sendMessage).not.toHaveBeenCalled();

    fireEvent.change(input, { target: { value: "  hi @bob and @carol.  " } });
    fireEvent.keyDown(input, { key: "Enter" });
    expect(community.sendMessage).toHaveBeenCalledWith("hi @bob and @carol.", ["bob", "carol"]);
    expect(community.setTyping).toHaveBeenLastCalledWith(false);
    expect(input.value).toBe("");
    await act(async () => {});
    expect(screen.getAllByTestId("message")).toHaveLength(1);
  });

  it("the Send button sends; an empty draft cannot be sent", () => {
    const { community } = setup();
    const send = screen.getByRole("button", { name: "Send" }) as HTMLButtonElement;
    expect(send.disabled).toBe(true);
    fireEvent.change(screen.getByRole("textbox", { name: "Message" }), { target: { value: "yo" } });
    expect(send.disabled).toBe(false);
    fireEvent.click(send);
    expect(community.sendMessage).toHaveBeenCalledWith("yo", []);
  });

  it("a failed send shows an error and gives the text back", async () => {
    const { community } = setup();
    community.sendMessage.mockRejectedValueOnce(new Error("rate limited"));
    const input = screen.getByRole("textbox", { name: "Message" }) as HTMLTextAreaElement;
    fireEvent.change(input, { target: { value: "oops" } });
    fireEvent.keyDown(input, { key: "Enter" });
    await act(async () => {});
    expect(screen.getByRole("alert").textContent).toContain("rate limited");
    expect(input.value).toBe("oops");
  });

  it("delete asks for confirmation and deletes only on confirm", async () => {
    const { community } = setup();
    await act(async () => {});
    act(() => {
      community.receive({ id: "bob", name: "Bob" }, "not mine");
      community.receive({ id: "me", name: "Me" }, "mine");
    });
    // Only the user's own message may be deleted.
    const buttons = screen.getAllByRole("button", { name: "Delete message" });
    expect(buttons).toHaveLength(1);
    const opener = buttons[0]!;

    // Cancel: nothing deleted, focus back on the opener.
    opener.focus();
    fireEvent.click(opener);
    let dialog = screen.getByRole("dialog");
    expect(dialog.textContent).toContain("mine");
    expect(document.activeElement).toBe(within(dialog).getByRole("button", { name: "Cancel" }));
    fireEvent.click(within(dialog).getByRole("button", { name: "Cancel" }));
    expect(screen.queryByRole("dialog")).toBeNull();
    expect(community.deleteMessage).not.toHaveBeenCalled();
    expect(document.activeElement).toBe(opener);

    // Escape: same.
    fireEvent.click(opener);
    dialog = screen.getByRole("dialog");
    fireEvent.keyDown(within(dialog).getByRole("button", { name: "Cancel" }), { key: "Escape" });
    expect(screen.queryByRole("dialog")).toBeNull();
    expect(community.deleteMessage).not.toHaveBeenCalled();
    expect(document.activeElement).toBe(opener);

    // Confirm.
    const id = community.getSnapshot().messages[1]!.id;
    fireEvent.click(opener);
    await act(async () => {
      fireEvent.click(within(screen.getByRole("dialog")).getByRole("button", { name: "Delete" }));
    });
    expect(community.deleteMessage).toHaveBeenCalledTimes(1);
    expect(community.deleteMessage).toHaveBeenCalledWith(id);
    expect(screen.queryByRole("dialog")).toBeNull();
    expect(screen.getAllByTestId("message")).toHaveLength(1);
    // The opener is gone with its message: the focus goes to the composer.
    expect(document.activeElement).toBe(screen.getByRole("textbox", { name: "Message" }));
  });

  it("closes the confirmation when the message is deleted elsewhere meanwhile", async () => {
    const { community } = setup();
    await act(async () => {});
    act(() => community.receive({ id: "me", name: "Me" }, "mine"));
    fireEvent.click(screen.getByRole("button", { name: "Delete message" }));
    expect(screen.getByRole("dialog")).toBeTruthy();
    act(() => community.set({ messages: [] }));
    expect(screen.queryByRole("dialog")).toBeNull();
    expect(community.deleteMessage).not.toHaveBeenCalled();
    expect(document.activeElement).toBe(screen.getByRole("textbox", { name: "Message" }));
  });

  it("canDelete lets an official delete anyone's message", async () => {
    const { community } = setup({ canDelete: () => true });
    await act(async () => {});
    act(() => {
      community.receive({ id: "bob", name: "Bob" }, "one");
      community.receive({ id: "carol", name: "Carol" }, "two");
    });
    expect(screen.getAllByRole("button", { name: "Delete message" })).toHaveLength(2);
  });

  it("shows who is typing, and nothing when nobody types", () => {
    const { community } = setup();
    const indicator = screen.getByTestId("typing-indicator");
    expect(indicator.textContent).toBe("");
    expect(indicator.getAttribute("aria-live")).toBe("polite");
    act(() => community.set({ typing: [{ userId: "bob", name: "Bob" }] }));
    expect(indicator.textContent).toContain("Bob is typing");
    act(() => community.set({ typing: [{ userId: "bob", name: "Bob" }, { userId: "c", name: "Carol" }] }));
    expect(indicator.textContent).toContain("Bob and Carol are typing");
    act(() => community.set({ typing: [] }));
    expect(indicator.textContent).toBe("");
  });

  it("shows the connection state as a dot", () => {
    const { client } = setup();
    const dot = screen.getByTestId("connection-dot");
    expect(dot.getAttribute("data-state")).toBe("open");
    expect(dot.getAttribute("aria-label")).toBe("Connected");
    act(() => client.setState("reconnecting"));
    expect(dot.getAttribute("data-state")).toBe("reconnecting");
    expect(dot.getAttribute("aria-label")).toBe("Disconnected");
  });

  it("reports a failed join with a retry", async () => {
    const client = new FakeClient();
    const community = client.community(ID);
    community.join.mockRejectedValueOnce(new Error("forbidden"));
    render(
      <ChorusProvider client={client.asClient}>
        <RealtimeChat communityId={ID} />
      </ChorusProvider>,
    );
    await act(async () => {});
    expect(screen.getByRole("alert").textContent).toContain("forbidden");
    await act(async () => {
      fireEvent.click(screen.getByRole("button", { name: "Retry" }));
    });
    expect(community.join).toHaveBeenCalledTimes(2);
    expect(screen.queryByRole("alert")).toBeNull();
  });
});

describe("helpers", () => {
  it("extractMentions finds @userId words once each", () => {
    expect(extractMentions("hey @bob, @alice.smith and @bob again; mail a@b.c")).toEqual(["bob", "alice.smith"]);
    expect(extractMentions("@x_1-2.")).toEqual(["x_1-2"]);
    expect(extractMentions("no mentions")).toEqual([]);
  });
  it("typingText names up to three and counts the rest", () => {
    const u = (name: string) => ({ userId: name, name });
    expect(typingText([])).toBe("");
    expect(typingText([u("A"), u("B"), u("C")])).toBe("A, B and C are typing");
    expect(typingText([u("A"), u("B"), u("C"), u("D")])).toBe("A, B and 2 others are typing");
  });
});

beforeEach(() => {
  // jsdom has no layout: keep scroll maths harmless.
  Object.defineProperty(HTMLElement.prototype, "scrollHeight", { configurable: true, get: () => 0 });
});

