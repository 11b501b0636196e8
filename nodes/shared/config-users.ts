import type { Node, NodeStatus } from 'node-red';

/**
 * The nodes using one config node, after the core MQTT broker node's
 * register/deregister pattern: the config node opens its connection when the
 * first user registers, closes it when the last one leaves, and pushes its
 * state to every user as a status dot.
 */
export class ConfigUsers {
  private readonly users = new Map<string, Node>();
  private lastStatus: NodeStatus = {};

  get size(): number {
    return this.users.size;
  }

  /** Adds a user; returns true if it is the first. */
  register(node: Node): boolean {
    this.users.set(node.id, node);
    node.status(this.lastStatus);
    return this.users.size === 1;
  }

  /** Removes a user; returns true if it was the last. */
  deregister(node: Node): boolean {
    this.users.delete(node.id);
    return this.users.size === 0;
  }

  status(status: NodeStatus): void {
    this.lastStatus = status;
    for (const node of this.users.values()) node.status(status);
  }
}
