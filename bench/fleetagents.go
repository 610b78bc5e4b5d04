package main

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// Simulated agents in child processes (-fleet-agent-procs): one process
// can hold no more connections than RLIMIT_NOFILE allows (20,000 here,
// and no CAP_SYS_RESOURCE to raise it), so a fleet larger than that,
// spread over replicas that each stay under the limit, needs its waiters
// spread over processes too. A child runs the same waiter as the parent
// for its share of the machines (i mod procs), told what to do on stdin,
// one command a line, answering each with one JSON line on stdout. The
// machine tokens reach it only through that pipe.

// agentSpec is the first line a child reads.
type agentSpec struct {
	Addrs    []string          `json:"addrs"` // the replicas' public host:port
	Sources  int               `json:"sources"`
	Machines int               `json:"machines"` // the fleet's size: indices below it
	Tokens   map[string]string `json:"tokens"`   // index → {id, token}, this child's share
	IDs      map[string]string `json:"ids"`
}

// agentReply is a child's answer to a command.
type agentReply struct {
	Waiting  int64         `json:"waiting"`
	Errors   int64         `json:"errors"`
	Answered int           `json:"answered"`
	Answers  map[int]int64 `json:"answers,omitempty"` // index → Unix ns of its fan-out answer
	RSSKiB   int64         `json:"rss_kib"`
	Error    string        `json:"error,omitempty"`
}

// runAgentsChild is a child's main: read the spec, then obey commands
// until stdin closes or "stop".
func runAgentsChild() error {
	in := bufio.NewReaderSize(os.Stdin, 1<<20)
	line, err := in.ReadBytes('\n')
	if err != nil {
		return err
	}
	var spec agentSpec
	if err := json.Unmarshal(line, &spec); err != nil {
		return err
	}
	raiseNoFile(uint64(len(spec.Tokens)) + 4096)
	f := &fleet{dialSem: make(chan struct{}, 64), machines: make([]fleetMachine, spec.Machines)}
	for _, a := range spec.Addrs {
		f.reps = append(f.reps, &replica{addr: a})
	}
	for i := range spec.Sources {
		f.sources = append(f.sources, net.IPv4(127, 0, 0, byte(1+i)))
	}
	var own []int
	for k, tok := range spec.Tokens {
		i, err := strconv.Atoi(k)
		if err != nil || i < 0 || i >= spec.Machines {
			return fmt.Errorf("agents: bad machine index %q", k)
		}
		f.machines[i] = fleetMachine{id: spec.IDs[k], token: tok}
		own = append(own, i)
	}
	slices.Sort(own)
	f.writeAt, f.answerAt = make([]atomic.Int64, spec.Machines), make([]atomic.Int64, spec.Machines)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var wg sync.WaitGroup
	started := 0 // own[:started] have a waiter
	out := json.NewEncoder(os.Stdout)
	reply := func(full bool) {
		r := agentReply{Waiting: f.waiting.Load(), Errors: f.waiterErrs.Load(), RSSKiB: rssKiB(os.Getpid())}
		if full {
			r.Answers = map[int]int64{}
		}
		for _, i := range own {
			if a := f.answerAt[i].Load(); a != 0 {
				r.Answered++
				if full {
					r.Answers[i] = a
				}
			}
		}
		out.Encode(r)
	}
	for {
		line, err := in.ReadString('\n')
		if err != nil {
			break
		}
		cmd, arg, _ := strings.Cut(strings.TrimSpace(line), " ")
		switch cmd {
		case "hold": // waiters for every own machine below arg
			n, _ := strconv.Atoi(arg)
			for ; started < len(own) && own[started] < n; started++ {
				wg.Add(1)
				go func(i int) { defer wg.Done(); f.waiter(ctx, i) }(own[started])
			}
			reply(false)
		case "arm": // the fan-out's writes are about to be sent
			for _, i := range own {
				f.answerAt[i].Store(0)
				f.writeAt[i].Store(1)
			}
			reply(false)
		case "status":
			reply(false)
		case "report":
			reply(true)
		case "stop":
			cancel()
			wg.Wait()
			reply(false)
			return nil
		default:
			out.Encode(agentReply{Error: "unknown command " + cmd})
		}
	}
	cancel()
	wg.Wait()
	return nil
}

// agentProc is the parent's handle on one child.
type agentProc struct {
	cmd *exec.Cmd
	in  io.WriteCloser
	out *bufio.Reader
	mu  sync.Mutex
}

// startAgents runs procs children, child k holding machines i ≡ k (mod
// procs).
func (f *fleet) startAgents(procs int) error {
	self, err := os.Executable()
	if err != nil {
		return err
	}
	var addrs []string
	for _, r := range f.reps {
		addrs = append(addrs, r.addr)
	}
	for k := range procs {
		spec := agentSpec{Addrs: addrs, Sources: len(f.sources), Machines: len(f.machines), Tokens: map[string]string{}, IDs: map[string]string{}}
		for i := k; i < len(f.machines); i += procs {
			spec.Tokens[strconv.Itoa(i)], spec.IDs[strconv.Itoa(i)] = f.machines[i].token, f.machines[i].id
		}
		c := exec.Command(self, "-fleet-agents-child")
		c.Stderr = os.Stderr
		in, err := c.StdinPipe()
		if err != nil {
			return err
		}
		out, err := c.StdoutPipe()
		if err != nil {
			return err
		}
		if err := c.Start(); err != nil {
			return err
		}
		p := &agentProc{cmd: c, in: in, out: bufio.NewReaderSize(out, 1<<20)}
		b, _ := json.Marshal(spec)
		if _, err := in.Write(append(b, '\n')); err != nil {
			return err
		}
		f.agents = append(f.agents, p)
	}
	return nil
}

// call sends cmd to child p and returns its answer (bounded in time).
func (p *agentProc) call(cmd string) (agentReply, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if _, err := io.WriteString(p.in, cmd+"\n"); err != nil {
		return agentReply{}, err
	}
	type res struct {
		r   agentReply
		err error
	}
	done := make(chan res, 1)
	go func() {
		line, err := p.out.ReadBytes('\n')
		var r agentReply
		if err == nil {
			err = json.Unmarshal(line, &r)
		}
		if err == nil && r.Error != "" {
			err = errors.New(r.Error)
		}
		done <- res{r, err}
	}()
	select {
	case x := <-done:
		return x.r, x.err
	case <-time.After(60 * time.Second):
		return agentReply{}, fmt.Errorf("agents: no answer to %q", cmd)
	}
}

// agentsCall sends cmd to every child and sums their counts.
func (f *fleet) agentsCall(cmd string) (agentReply, error) {
	var sum agentReply
	for _, p := range f.agents {
		r, err := p.call(cmd)
		if err != nil {
			return sum, err
		}
		sum.Waiting += r.Waiting
		sum.Errors += r.Errors
		sum.Answered += r.Answered
		sum.RSSKiB += r.RSSKiB
		if r.Answers != nil {
			if sum.Answers == nil {
				sum.Answers = map[int]int64{}
			}
			for i, a := range r.Answers {
				sum.Answers[i] = a
			}
		}
	}
	return sum, nil
}

func (f *fleet) stopAgents() {
	for _, p := range f.agents {
		p.call("stop")
		p.in.Close()
		done := make(chan struct{})
		go func() { p.cmd.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(30 * time.Second):
			p.cmd.Process.Kill()
			<-done
		}
	}
	f.agents = nil
}
