// @vitest-environment jsdom
import { act, cleanup, render, screen } from "@testing-library/react";
import { StrictMode, useState } from "react";
import { afterEach, describe, expect, it, vi } from "vitest";
import { ChorusProvider, communityRefCount, useCommunity, useConnectionState } from "../../src/react/index";
import { FakeClient, type FakeCommunity } from "./fake";

const ID = "22222222-2222-4222-8222-222222222222";

afterEach(() => {
  cleanup();
  vi.useRealTimers();
});

function Viewer({ label }: { label: string }) {
  const c = useCommunity(ID);
  return (
    <div data-testid={label}>
      {c.joined ? "joined" : "not joined"} {c.messages.length}
    </div>
  );
}

function State() {
  return <span data-testid="state">{useConnectionState()}</span>;
}

describe("useCommunity", () => {
  it("joins once for two components and leaves when the last one unmounts", async () => {
    vi.useFakeTimers();
    const client = new FakeClient();
    const community = client.community(ID) as FakeCommunity;
    let setShown!: (n: number) => void;
    function Harness() {
      const [shown, set] = useState(2);
      setShown = set;
      return (
        <>
          {shown >= 1 && <Viewer label="a" />}
          {shown >= 2 && <Viewer label="b" />}
        </>
      );
    }
    render(
      <ChorusProvider client={client.asClient}>
        <Harness />
      </ChorusProvider>,
    );
    await act(async () => {});
    expect(community.join).toHaveBeenCalledTimes(1);
    expect(communityRefCount(community as never)).toBe(2);
    expect(screen.getByTestId("a").textContent).toBe("joined 0");

    act(() => community.receive({ id: "bob", name: "Bob" }, "hi"));
    expect(screen.getByTestId("b").textContent).toBe("joined 1");

    act(() => setShown(1));
    act(() => vi.advanceTimersByTime(10));
    expect(community.leave).not.toHaveBeenCalled();

    act(() => setShown(0));
    expect(community.leave).not.toHaveBeenCalled(); // deferred by a tick
    act(() => vi.advanceTimersByTime(10));
    expect(community.leave).toHaveBeenCalledTimes(1);
    expect(communityRefCount(community as never)).toBe(0);

    act(() => setShown(1));
    expect(community.join).toHaveBeenCalledTimes(2);
  });

  it("does not leave and rejoin under StrictMode's double effects", async () => {
    vi.useFakeTimers();
    const client = new FakeClient();
    const community = client.community(ID);
    render(
      <StrictMode>
        <ChorusProvider client={client.asClient}>
          <Viewer label="a" />
        </ChorusProvider>
      </StrictMode>,
    );
    await act(async () => {
      vi.advanceTimersByTime(10);
    });
    expect(community.join).toHaveBeenCalledTimes(1);
    expect(community.leave).not.toHaveBeenCalled();
  });

  it("reloads the community once on resync-required, however many components hold it", async () => {
    const client = new FakeClient();
    const community = client.community(ID);
    render(
      <ChorusProvider client={client.asClient}>
        <Viewer label="a" />
        <Viewer label="b" />
      </ChorusProvider>,
    );
    await act(async () => {});
    expect(community.join).toHaveBeenCalledTimes(1);
    await act(async () => {
      client.emit("resync-required", { communityId: "someone-else" });
      client.emit("resync-required", { communityId: ID });
    });
    expect(community.leave).toHaveBeenCalledTimes(1);
    expect(community.join).toHaveBeenCalledTimes(2);
    expect(screen.getByTestId("a").textContent).toBe("joined 0");
  });

  it("useConnectionState follows the client", () => {
    const client = new FakeClient();
    client.state = "connecting";
    render(
      <ChorusProvider client={client.asClient}>
        <State />
      </ChorusProvider>,
    );
    expect(screen.getByTestId("state").textContent).toBe("connecting");
    act(() => client.setState("open"));
    expect(screen.getByTestId("state").textContent).toBe("open");
  });
});
