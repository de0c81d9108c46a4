package installer

import (
	"context"
	"fmt"
	"os"
	"sync"

	"github.com/kardianos/service"
)

// Run is the service run mode: it runs run under the service control
// manager, cancelling its context when the manager stops the service and
// waiting for it to return. If run fails on its own, the process exits
// with status 1 so that the manager's recovery action restarts it.
func Run(l Layout, run func(ctx context.Context) error) error {
	p := &program{run: run}
	s, err := newService(l, p)
	if err != nil {
		return err
	}
	return s.Run()
}

type program struct {
	run func(ctx context.Context) error

	mu     sync.Mutex // guards cancel and done
	cancel context.CancelFunc
	done   chan struct{}
}

func (p *program) Start(service.Service) error {
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	p.mu.Lock()
	p.cancel, p.done = cancel, done
	p.mu.Unlock()
	go func() {
		defer close(done)
		err := p.run(ctx)
		if ctx.Err() == nil {
			// Not asked to stop: a failure the manager should see.
			fmt.Fprintf(os.Stderr, "tether-agent: %v\n", err)
			os.Exit(1)
		}
	}()
	return nil
}

func (p *program) Stop(service.Service) error {
	p.mu.Lock()
	cancel, done := p.cancel, p.done
	p.mu.Unlock()
	if cancel != nil {
		cancel()
		<-done
	}
	return nil
}
