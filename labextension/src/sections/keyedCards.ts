/**
 * A list of cards keyed by ID, kept across renders and updated in place: a refresh never
 * rebuilds a card, so a focused button keeps its focus and a half-made choice (the kernel of a
 * request being accepted) survives. The Requests section keeps its incoming requests this way and
 * the Jobs section its jobs.
 *
 * Only `remove` and `replaceChildren` are called on the nodes, so it is unit-tested in node with
 * stand-ins.
 */

/** A card: something with one node in the list. */
export interface IKeyedCard<N> {
  readonly node: N;
}

/** A node that can leave its parent. */
export interface IRemovable {
  remove(): void;
}

/** The list node the cards go into. */
export interface ICardContainer<N> {
  readonly children: ArrayLike<unknown>;
  replaceChildren(...nodes: N[]): void;
}

export class KeyedCards<T, N extends IRemovable, C extends IKeyedCard<N>> {
  constructor(options: KeyedCards.IOptions<T, C>) {
    this._key = options.key;
    this._create = options.create;
    this._update = options.update;
  }

  /** How many cards are kept. */
  get size(): number {
    return this._cards.size;
  }

  /** The card of an ID, if it is listed. */
  get(id: string): C | undefined {
    return this._cards.get(id);
  }

  /**
   * Bring the cards in line with `items`: the cards of IDs no longer listed are dropped (their
   * nodes leave the page), a card is created for each new ID, and every listed card is updated.
   * Returns the cards' nodes in the order of `items`.
   */
  update(items: readonly T[]): N[] {
    const ids = new Set(items.map(item => this._key(item)));
    for (const [id, card] of this._cards) {
      if (!ids.has(id)) {
        card.node.remove();
        this._cards.delete(id);
      }
    }
    const nodes: N[] = [];
    for (const item of items) {
      const id = this._key(item);
      let card = this._cards.get(id);
      if (!card) {
        card = this._create(item);
        this._cards.set(id, card);
      }
      this._update(card, item);
      nodes.push(card.node);
    }
    return nodes;
  }

  private readonly _cards = new Map<string, C>();
  private readonly _key: (item: T) => string;
  private readonly _create: (item: T) => C;
  private readonly _update: (card: C, item: T) => void;
}

export namespace KeyedCards {
  export interface IOptions<T, C> {
    /** The item's ID (one card per ID). */
    key(item: T): string;
    /** A card for an item whose ID has none yet. */
    create(item: T): C;
    /** Bring a card in line with its item (at every render, right after `create` too). */
    update(card: C, item: T): void;
  }
}

/**
 * Make `nodes` the children of `container`, in this order, touching the DOM only when they differ
 * (moving a node out and back in would take its focus). Returns true when it replaced them.
 */
export function setChildren<N>(container: ICardContainer<N>, nodes: readonly N[]): boolean {
  const current = Array.from(container.children);
  if (current.length === nodes.length && current.every((node, i) => node === nodes[i])) {
    return false;
  }
  container.replaceChildren(...nodes);
  return true;
}
