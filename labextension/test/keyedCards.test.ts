import { describe, expect, it } from 'vitest';

import { KeyedCards, setChildren } from '../src/sections/keyedCards';

/** A stand-in for a DOM node in a list. */
class FakeNode {
  constructor(readonly id: string) {}
  parent: FakeList | null = null;
  remove(): void {
    if (this.parent) {
      this.parent.children = this.parent.children.filter(n => n !== this);
      this.parent = null;
    }
  }
}

/** A stand-in for the list node. */
class FakeList {
  children: FakeNode[] = [];
  replaced = 0;
  replaceChildren(...nodes: FakeNode[]): void {
    this.replaced++;
    for (const node of this.children) {
      node.parent = null;
    }
    for (const node of nodes) {
      node.remove();
      node.parent = this;
    }
    this.children = nodes;
  }
}

interface IItem {
  id: string;
  label: string;
}

class Card {
  constructor(item: IItem) {
    this.node = new FakeNode(item.id);
  }
  readonly node: FakeNode;
  updates: string[] = [];
}

function makeCards() {
  const created: string[] = [];
  const cards = new KeyedCards<IItem, FakeNode, Card>({
    key: item => item.id,
    create: item => {
      created.push(item.id);
      return new Card(item);
    },
    update: (card, item) => card.updates.push(item.label)
  });
  return { cards, created };
}

const item = (id: string, label = id): IItem => ({ id, label });

describe('KeyedCards', () => {
  it('creates one card per ID and updates it in place at every render', () => {
    const { cards, created } = makeCards();
    const first = cards.update([item('a', 'a1'), item('b', 'b1')]);
    const second = cards.update([item('a', 'a2'), item('b', 'b2')]);
    expect(created).toEqual(['a', 'b']);
    expect(second).toEqual(first);
    expect(cards.get('a')?.updates).toEqual(['a1', 'a2']);
    expect(cards.get('b')?.updates).toEqual(['b1', 'b2']);
  });

  it("returns the nodes in the items' order", () => {
    const { cards } = makeCards();
    cards.update([item('a'), item('b'), item('c')]);
    const nodes = cards.update([item('c'), item('a'), item('b')]);
    expect(nodes.map(n => n.id)).toEqual(['c', 'a', 'b']);
  });

  it('drops the cards of IDs no longer listed and takes their nodes off the page', () => {
    const { cards, created } = makeCards();
    const list = new FakeList();
    setChildren(list, cards.update([item('a'), item('b'), item('c')]));
    const b = cards.get('b')!;
    const nodes = cards.update([item('a'), item('c')]);
    expect(cards.size).toBe(2);
    expect(cards.get('b')).toBeUndefined();
    expect(b.node.parent).toBeNull();
    expect(list.children.map(n => n.id)).toEqual(['a', 'c']);
    expect(nodes.map(n => n.id)).toEqual(['a', 'c']);
    // an ID that comes back gets a new card
    cards.update([item('b')]);
    expect(created).toEqual(['a', 'b', 'c', 'b']);
    expect(cards.get('b')).not.toBe(b);
  });

  it('an empty list drops every card', () => {
    const { cards } = makeCards();
    cards.update([item('a'), item('b')]);
    expect(cards.update([])).toEqual([]);
    expect(cards.size).toBe(0);
  });
});

describe('setChildren', () => {
  it('replaces the children only when they differ, order included', () => {
    const list = new FakeList();
    const [a, b, c] = ['a', 'b', 'c'].map(id => new FakeNode(id));
    expect(setChildren(list, [a, b])).toBe(true);
    expect(setChildren(list, [a, b])).toBe(false);
    expect(list.replaced).toBe(1);
    expect(setChildren(list, [b, a])).toBe(true);
    expect(list.children).toEqual([b, a]);
    expect(setChildren(list, [b, a, c])).toBe(true);
    expect(setChildren(list, [])).toBe(true);
    expect(list.children).toEqual([]);
    expect(setChildren(list, [])).toBe(false);
    expect(list.replaced).toBe(4);
  });

  it('leaves the remaining nodes in place when a removed card was the only change', () => {
    const { cards } = makeCards();
    const list = new FakeList();
    setChildren(list, cards.update([item('a'), item('b'), item('c')]));
    expect(setChildren(list, cards.update([item('a'), item('c')]))).toBe(false);
    expect(list.replaced).toBe(1);
  });
});
