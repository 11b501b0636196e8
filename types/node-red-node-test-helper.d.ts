// The package ships no typings; this declares the part of its API our flow tests use.
declare module 'node-red-node-test-helper' {
  import type { Node } from 'node-red';

  type NodeModule = (RED: unknown) => void | Promise<void>;
  type FlowNode = Record<string, unknown> & { id: string; type: string };

  interface TestHelperNode extends Node {
    /** Emitted for each call of a proxied Node method, e.g. 'call:status', 'call:error'. */
    on(event: string, listener: (...args: unknown[]) => void): this;
    receive(msg: Record<string, unknown>): void;
  }

  interface NodeTestHelper {
    init(runtimePath?: string, userSettings?: Record<string, unknown>): void;
    load(nodes: NodeModule | NodeModule[], flow: FlowNode[], credentials?: Record<string, unknown>): Promise<void>;
    unload(): Promise<void>;
    getNode(id: string): TestHelperNode | undefined | null;
    startServer(): Promise<void>;
    stopServer(): Promise<void>;
    /** supertest against the admin app. */
    /** A supertest agent on the runtime's admin app. */
    request(): {
      get(path: string): PromiseLike<{ status: number; body: unknown }>;
      post(path: string): { send(body: unknown): PromiseLike<{ status: number; body: unknown }> };
    };
    settings(userSettings: Record<string, unknown>): void;
  }

  const helper: NodeTestHelper;
  export = helper;
}
