// Package watchhub is the in-process fan-out of store changes to watchers,
// shared by the store backends.
package watchhub

import (
	"errors"
	"sync"

	"github.com/wicket-sh/wicket/internal/store"
)

// ErrClosed is returned by calls on a closed store.
var ErrClosed = errors.New("store closed")

// Hub fans machine and key changes out to a store's in-process watchers;
// both backends use it. Machine states can arrive out of order and twice
// (a writer right after its commit, and, for etcd, the watch that also
// carries other replicas' writes); each carries its revision and each
// subscriber drops anything not newer than what it was last offered.
type Hub struct {
	mu       sync.Mutex
	closed   bool
	machines map[string]map[*MachineSub]struct{}
	keys     map[chan struct{}]struct{}
}

// MachineSub is one WatchMachine subscriber. ch has room for one event: the
// newest undelivered state. Fields are guarded by Hub.mu.
type MachineSub struct {
	id     string
	ch     chan store.Event
	rev    uint64 // revision of the last event offered
	closed bool
}

func New() Hub {
	return Hub{
		machines: make(map[string]map[*MachineSub]struct{}),
		keys:     make(map[chan struct{}]struct{}),
	}
}

func (h *Hub) SubscribeMachine(id string) (*MachineSub, error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.closed {
		return nil, ErrClosed
	}
	sub := &MachineSub{id: id, ch: make(chan store.Event, 1)}
	subs := h.machines[id]
	if subs == nil {
		subs = make(map[*MachineSub]struct{})
		h.machines[id] = subs
	}
	subs[sub] = struct{}{}
	return sub, nil
}

func (h *Hub) UnsubscribeMachine(sub *MachineSub) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if sub.closed {
		return
	}
	sub.closed = true
	close(sub.ch)
	subs := h.machines[sub.id]
	delete(subs, sub)
	if len(subs) == 0 {
		delete(h.machines, sub.id)
	}
}

// PublishMachine offers m (nil for a deletion) at revision rev to every
// watcher of id, each getting its own copy.
func (h *Hub) PublishMachine(id string, m *store.Machine, rev uint64) {
	h.mu.Lock()
	defer h.mu.Unlock()
	for sub := range h.machines[id] {
		h.offerLocked(sub, store.Event{MachineID: id, Machine: m.Clone(), Revision: rev})
	}
}

func (h *Hub) Offer(sub *MachineSub, ev store.Event) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.offerLocked(sub, ev)
}

// offerLocked replaces any undelivered event with ev, so a slow reader
// never blocks a writer and always ends up with the latest state.
func (h *Hub) offerLocked(sub *MachineSub, ev store.Event) {
	if sub.closed || ev.Revision <= sub.rev {
		return
	}
	sub.rev = ev.Revision
	select {
	case <-sub.ch:
	default:
	}
	// Cannot block: the buffer is now empty and only we, under h.mu, send.
	sub.ch <- ev
}

func (h *Hub) SubscribeKeys() (chan struct{}, error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.closed {
		return nil, ErrClosed
	}
	ch := make(chan struct{}, 1)
	h.keys[ch] = struct{}{}
	return ch, nil
}

func (h *Hub) UnsubscribeKeys(ch chan struct{}) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if _, ok := h.keys[ch]; ok {
		delete(h.keys, ch)
		close(ch)
	}
}

// PublishKeys wakes every keys watcher; a pending wake-up already covers
// this change, so a full buffer is left as is.
func (h *Hub) PublishKeys() {
	h.mu.Lock()
	defer h.mu.Unlock()
	for ch := range h.keys {
		select {
		case ch <- struct{}{}:
		default:
		}
	}
}

// MachineIDs returns the ids that have watchers.
func (h *Hub) MachineIDs() []string {
	h.mu.Lock()
	defer h.mu.Unlock()
	ids := make([]string, 0, len(h.machines))
	for id := range h.machines {
		ids = append(ids, id)
	}
	return ids
}

// Close ends every watch and refuses new ones.
func (h *Hub) Close() {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.closed = true
	for _, subs := range h.machines {
		for sub := range subs {
			sub.closed = true
			close(sub.ch)
		}
	}
	clear(h.machines)
	for ch := range h.keys {
		close(ch)
	}
	clear(h.keys)
}

// Events is the subscriber's channel: the newest undelivered state, closed
// when the subscription ends.
func (s *MachineSub) Events() <-chan store.Event { return s.ch }
