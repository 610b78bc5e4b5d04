package etcd

import (
	"errors"
	"sync"

	"github.com/wicket-sh/wicket/internal/store"
)

// errClosed is returned by calls on a closed store.
var errClosed = errors.New("store closed")

// hub fans changes out to this process's watchers. It is the same design
// as store/bolt's: machine states arrive from two sources, a writer in this
// process right after its transaction commits and the etcd watch (which
// also carries other replicas' writes), so they can arrive out of order and
// twice; each carries its etcd revision and each subscriber drops anything
// not newer than what it was last offered.
type hub struct {
	mu       sync.Mutex
	closed   bool
	machines map[string]map[*machineSub]struct{}
	keys     map[chan struct{}]struct{}
}

// machineSub is one WatchMachine subscriber. ch has room for one event: the
// newest undelivered state. Fields are guarded by hub.mu.
type machineSub struct {
	id     string
	ch     chan store.Event
	rev    uint64 // revision of the last event offered
	closed bool
}

func newHub() hub {
	return hub{
		machines: make(map[string]map[*machineSub]struct{}),
		keys:     make(map[chan struct{}]struct{}),
	}
}

func (h *hub) subscribeMachine(id string) (*machineSub, error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.closed {
		return nil, errClosed
	}
	sub := &machineSub{id: id, ch: make(chan store.Event, 1)}
	subs := h.machines[id]
	if subs == nil {
		subs = make(map[*machineSub]struct{})
		h.machines[id] = subs
	}
	subs[sub] = struct{}{}
	return sub, nil
}

func (h *hub) unsubscribeMachine(sub *machineSub) {
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

// publishMachine offers m (nil for a deletion) at revision rev to every
// watcher of id, each getting its own copy.
func (h *hub) publishMachine(id string, m *store.Machine, rev uint64) {
	h.mu.Lock()
	defer h.mu.Unlock()
	for sub := range h.machines[id] {
		h.offerLocked(sub, store.Event{MachineID: id, Machine: m.Clone(), Revision: rev})
	}
}

func (h *hub) offer(sub *machineSub, ev store.Event) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.offerLocked(sub, ev)
}

// offerLocked replaces any undelivered event with ev, so a slow reader
// never blocks a writer and always ends up with the latest state.
func (h *hub) offerLocked(sub *machineSub, ev store.Event) {
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

func (h *hub) subscribeKeys() (chan struct{}, error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.closed {
		return nil, errClosed
	}
	ch := make(chan struct{}, 1)
	h.keys[ch] = struct{}{}
	return ch, nil
}

func (h *hub) unsubscribeKeys(ch chan struct{}) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if _, ok := h.keys[ch]; ok {
		delete(h.keys, ch)
		close(ch)
	}
}

// publishKeys wakes every keys watcher; a pending wake-up already covers
// this change, so a full buffer is left as is.
func (h *hub) publishKeys() {
	h.mu.Lock()
	defer h.mu.Unlock()
	for ch := range h.keys {
		select {
		case ch <- struct{}{}:
		default:
		}
	}
}

// machineIDs returns the ids that have watchers.
func (h *hub) machineIDs() []string {
	h.mu.Lock()
	defer h.mu.Unlock()
	ids := make([]string, 0, len(h.machines))
	for id := range h.machines {
		ids = append(ids, id)
	}
	return ids
}

// close ends every watch and refuses new ones.
func (h *hub) close() {
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
