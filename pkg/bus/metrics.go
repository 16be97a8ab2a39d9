package bus

import (
	"context"
	"sync"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"
)

// ConsumerRef names a durable consumer.
type ConsumerRef struct{ Stream, Consumer string }

// consumerCollector reads durable consumers' state from JetStream at every scrape:
// one consumer-info request per consumer, bounded by a timeout. A consumer whose info
// cannot be read is left out of that scrape (its series go stale rather than lie).
type consumerCollector struct {
	js        jetstream.JetStream
	consumers []ConsumerRef
	timeout   time.Duration

	pending, ackPending, redelivered, waiting *prometheus.Desc
	errors                                    prometheus.Counter
}

var consumerLabels = []string{"stream", "consumer"}

// RegisterConsumerMetrics registers on reg, for each consumer, its lag as JetStream
// reports it, read at scrape time:
//
//	ferry_nats_consumer_pending_messages{stream,consumer}      messages not yet delivered (NumPending)
//	ferry_nats_consumer_ack_pending_messages{stream,consumer}  delivered, not yet acknowledged (NumAckPending)
//	ferry_nats_consumer_redelivered_messages{stream,consumer}  unacknowledged messages delivered more than once (NumRedelivered)
//	ferry_nats_consumer_waiting_pulls{stream,consumer}         pull requests waiting for messages (NumWaiting)
//	ferry_nats_consumer_info_errors_total                      scrapes that could not read a consumer's info
//
// Every replica of a service reports the same consumer: aggregate with max, not sum.
func RegisterConsumerMetrics(reg prometheus.Registerer, js jetstream.JetStream, consumers ...ConsumerRef) error {
	c := &consumerCollector{
		js: js, consumers: consumers, timeout: 3 * time.Second,
		pending: prometheus.NewDesc("ferry_nats_consumer_pending_messages",
			"Messages of the durable consumer's stream not yet delivered to it (NumPending): the backlog.", consumerLabels, nil),
		ackPending: prometheus.NewDesc("ferry_nats_consumer_ack_pending_messages",
			"Messages delivered to the durable consumer and not yet acknowledged (NumAckPending): work in flight.", consumerLabels, nil),
		redelivered: prometheus.NewDesc("ferry_nats_consumer_redelivered_messages",
			"Unacknowledged messages delivered more than once (NumRedelivered).", consumerLabels, nil),
		waiting: prometheus.NewDesc("ferry_nats_consumer_waiting_pulls",
			"Pull requests waiting on the durable consumer (NumWaiting): idle workers.", consumerLabels, nil),
		errors: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "ferry_nats_consumer_info_errors_total",
			Help: "Scrapes that could not read a durable consumer's info from JetStream.",
		}),
	}
	return reg.Register(c)
}

func (c *consumerCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- c.pending
	ch <- c.ackPending
	ch <- c.redelivered
	ch <- c.waiting
	c.errors.Describe(ch)
}

func (c *consumerCollector) Collect(ch chan<- prometheus.Metric) {
	ctx, cancel := context.WithTimeout(context.Background(), c.timeout)
	defer cancel()
	var wg sync.WaitGroup
	for _, ref := range c.consumers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			cons, err := c.js.Consumer(ctx, ref.Stream, ref.Consumer)
			if err != nil {
				c.errors.Inc()
				return
			}
			info := cons.CachedInfo()
			labels := []string{ref.Stream, ref.Consumer}
			ch <- prometheus.MustNewConstMetric(c.pending, prometheus.GaugeValue, float64(info.NumPending), labels...)
			ch <- prometheus.MustNewConstMetric(c.ackPending, prometheus.GaugeValue, float64(info.NumAckPending), labels...)
			ch <- prometheus.MustNewConstMetric(c.redelivered, prometheus.GaugeValue, float64(info.NumRedelivered), labels...)
			ch <- prometheus.MustNewConstMetric(c.waiting, prometheus.GaugeValue, float64(info.NumWaiting), labels...)
		}()
	}
	wg.Wait()
	c.errors.Collect(ch)
}
