package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"sort"
	"strings"
	"time"

	"github.com/BurntSushi/toml"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/spf13/pflag"
)

// applySettings fills the flags not given on the command line from the
// environment (envPrefix + the flag name in upper case with _ for -), then
// from the TOML file at path (keys are flag names with _ for -): the same
// precedence as serve's, flag > environment > file > default.
func applySettings(fs *pflag.FlagSet, path, envPrefix string) error {
	set := map[string]bool{}
	fs.Visit(func(f *pflag.Flag) { set[f.Name] = true })
	var errs []string
	fs.VisitAll(func(f *pflag.Flag) {
		if f.Name == "help" || set[f.Name] {
			return
		}
		env := envPrefix + strings.ToUpper(strings.ReplaceAll(f.Name, "-", "_"))
		if v, ok := os.LookupEnv(env); ok {
			if err := f.Value.Set(v); err != nil {
				errs = append(errs, fmt.Sprintf("%s: %v", env, err))
			}
			set[f.Name] = true
		}
	})
	if len(errs) > 0 {
		return fmt.Errorf("%w: environment: %s", errUsage, strings.Join(errs, "; "))
	}
	if path == "" {
		return nil
	}
	var m map[string]any
	if _, err := toml.DecodeFile(path, &m); err != nil {
		return fmt.Errorf("%w: config %s: %v", errUsage, path, err)
	}
	var unknown []string
	for key, v := range m {
		name := strings.ReplaceAll(key, "_", "-")
		f := fs.Lookup(name)
		if f == nil || name == "config" || name == "help" {
			unknown = append(unknown, key)
			continue
		}
		if set[name] {
			continue
		}
		if err := f.Value.Set(fmt.Sprint(v)); err != nil {
			return fmt.Errorf("%w: config %s: key %s: %v", errUsage, path, key, err)
		}
	}
	if len(unknown) > 0 {
		sort.Strings(unknown)
		return fmt.Errorf("%w: config %s: unknown keys %s", errUsage, path, strings.Join(unknown, ", "))
	}
	return nil
}

// serveMetrics serves reg at http://addr/metrics until ctx ends; "" is off.
func serveMetrics(ctx context.Context, addr string, reg *prometheus.Registry, log *slog.Logger) error {
	if addr == "" {
		return nil
	}
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return fmt.Errorf("metrics address: %w", err)
	}
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{ErrorHandling: promhttp.ContinueOnError}))
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
	go func() {
		<-ctx.Done()
		srv.Close()
	}()
	go func() {
		if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			log.Error("metrics server", "err", err)
		}
	}()
	log.Info("serving metrics", "addr", ln.Addr().String())
	return nil
}
