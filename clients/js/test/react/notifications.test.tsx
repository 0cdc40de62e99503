// @vitest-environment jsdom
import { act, cleanup, fireEvent, render, screen, within } from "@testing-library/react";
import { afterEach, describe, expect, it } from "vitest";
import { ChorusProvider, NotificationCenter } from "../../src/react/index";
import { FakeClient, notification } from "./fake";

afterEach(cleanup);

function setup(items = [notification("n1", "mention", "Bob mentioned you"), notification("n2", "system", "Welcome", true), notification("n3", "mention", "Carol mentioned you")]) {
  const client = new FakeClient();
  for (const n of items.reverse()) client.notes.push(n);
  render(
    <ChorusProvider client={client.asClient}>
      <button type="button">elsewhere</button>
      <NotificationCenter />
    </ChorusProvider>,
  );
  return { client, notes: client.notes };
}

describe("NotificationCenter", () => {
  it("shows the unread count on the bell, and no badge when all are read", async () => {
    const { notes } = setup();
    const bell = screen.getByRole("button", { name: "Notifications" });
    expect(bell.getAttribute("data-unread")).toBe("2");
    expect(screen.getByTestId("unread-badge").textContent).toBe("2");
    act(() => notes.push(notification("n4", "mention", "Dan mentioned you")));
    expect(bell.getAttribute("data-unread")).toBe("3");
    expect(screen.getByTestId("unread-badge").textContent).toBe("3");
    await act(async () => {
      await notes.markAllRead();
    });
    expect(bell.getAttribute("data-unread")).toBe("0");
    expect(screen.queryByTestId("unread-badge")).toBeNull();
  });

  it("opens a dropdown (refreshing), lists items with type badges, marks all read", async () => {
    const { notes } = setup();
    const bell = screen.getByRole("button", { name: "Notifications" });
    expect(bell.getAttribute("aria-expanded")).toBe("false");
    await act(async () => {
      fireEvent.click(bell);
    });
    expect(notes.refresh).toHaveBeenCalledTimes(1);
    expect(bell.getAttribute("aria-expanded")).toBe("true");
    const dialog = screen.getByRole("dialog", { name: "Notifications" });
    const items = within(dialog).getAllByTestId("notification");
    expect(items.map((i) => i.getAttribute("data-read"))).toEqual(["false", "true", "false"]);
    expect(items[0]!.textContent).toContain("mention");
    expect(items[0]!.textContent).toContain("Bob mentioned you");
    expect(items[0]!.querySelector(".chorus-type--mention")).not.toBeNull();
    // Only unread items offer "Mark read".
    expect(within(items[1]!).queryByRole("button", { name: "Mark read" })).toBeNull();

    await act(async () => {
      fireEvent.click(within(dialog).getByRole("button", { name: "Mark all read" }));
    });
    expect(notes.markAllRead).toHaveBeenCalledTimes(1);
    expect(within(dialog).getAllByTestId("notification").map((i) => i.getAttribute("data-read"))).toEqual(["true", "true", "true"]);
    expect(screen.queryByTestId("unread-badge")).toBeNull();
    expect((within(dialog).getByRole("button", { name: "Mark all read" }) as HTMLButtonElement).disabled).toBe(true);
  });

  it("marks one read and deletes one", async () => {
    const { notes } = setup();
    await act(async () => {
      fireEvent.click(screen.getByRole("button", { name: "Notifications" }));
    });
    const dialog = screen.getByRole("dialog", { name: "Notifications" });
    const first = within(dialog).getAllByTestId("notification")[0]!;
    await act(async () => {
      fireEvent.click(within(first).getByRole("button", { name: "Mark read" }));
    });
    expect(notes.markRead).toHaveBeenCalledWith("n1");
    expect(screen.getByTestId("unread-badge").textContent).toBe("1");

    const second = within(dialog).getAllByTestId("notification")[1]!;
    await act(async () => {
      fireEvent.click(within(second).getByRole("button", { name: "Delete notification" }));
    });
    expect(notes.remove).toHaveBeenCalledWith("n2");
    expect(within(dialog).getAllByTestId("notification")).toHaveLength(2);
  });

  it("Escape closes the dropdown and returns the focus to the bell", async () => {
    setup();
    const bell = screen.getByRole("button", { name: "Notifications" });
    bell.focus();
    await act(async () => {
      fireEvent.click(bell);
    });
    const dialog = screen.getByRole("dialog", { name: "Notifications" });
    expect(dialog.contains(document.activeElement)).toBe(true);
    fireEvent.keyDown(document.activeElement!, { key: "Escape" });
    expect(screen.queryByRole("dialog")).toBeNull();
    expect(document.activeElement).toBe(bell);
    expect(bell.getAttribute("aria-expanded")).toBe("false");
  });

  it("Escape still closes after Mark all read disabled the focused button", async () => {
    setup();
    const bell = screen.getByRole("button", { name: "Notifications" });
    await act(async () => {
      fireEvent.click(bell);
    });
    const markAll = screen.getByRole("button", { name: "Mark all read" });
    markAll.focus();
    await act(async () => {
      fireEvent.click(markAll);
    });
    expect((markAll as HTMLButtonElement).disabled).toBe(true);
    expect(screen.getByRole("dialog").contains(document.activeElement)).toBe(true);
    fireEvent.keyDown(document.activeElement!, { key: "Escape" });
    expect(screen.queryByRole("dialog")).toBeNull();
    expect(document.activeElement).toBe(bell);
  });

  it("a click outside closes it; the bell toggles it", async () => {
    setup();
    const bell = screen.getByRole("button", { name: "Notifications" });
    await act(async () => {
      fireEvent.click(bell);
    });
    expect(screen.getByRole("dialog")).toBeTruthy();
    fireEvent.mouseDown(screen.getByRole("button", { name: "elsewhere" }));
    expect(screen.queryByRole("dialog")).toBeNull();
    await act(async () => {
      fireEvent.click(bell);
    });
    expect(screen.getByRole("dialog")).toBeTruthy();
    await act(async () => {
      fireEvent.click(bell);
    });
    expect(screen.queryByRole("dialog")).toBeNull();
  });

  it("says so when there are none", async () => {
    setup([]);
    expect(screen.queryByTestId("unread-badge")).toBeNull();
    await act(async () => {
      fireEvent.click(screen.getByRole("button", { name: "Notifications" }));
    });
    expect(screen.getByRole("dialog").textContent).toContain("No notifications");
  });
});
