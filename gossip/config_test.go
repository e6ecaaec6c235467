package gossip

import (
	"errors"
	"strings"
	"testing"

	"github.com/hashicorp/memberlist"
)

func TestConfig_Validate(t *testing.T) {
	t.Parallel()
	valid := func() Config {
		c := DefaultConfig()
		c.Name, c.Site, c.GRPCAddr = "dp-1", "paris", "10.0.0.1:9000"
		return c
	}
	tests := []struct {
		name    string
		mod     func(*Config)
		wantErr string // "" = valid
	}{
		{"defaults plus gRPC address", func(*Config) {}, ""},
		{"full", func(c *Config) {
			c.HTTPAddr, c.AdvertiseAddr, c.Join = "dp-1.lan:8080", "192.168.1.5:7946", []string{"dp-2:7946"}
			c.SecretKey = make([]byte, 32)
			c.Memberlist = memberlist.DefaultLANConfig()
		}, ""},
		{"zero durations mean defaults", func(c *Config) { c.RejoinInterval, c.LeaveTimeout, c.ForgetAfter = 0, 0, 0 }, ""},
		{"bind port 0", func(c *Config) { c.BindAddr = "127.0.0.1:0" }, ""},
		{"custom transport ignores BindAddr", func(c *Config) {
			c.BindAddr = "nonsense"
			c.Memberlist = memberlist.DefaultLANConfig()
			c.Memberlist.Transport = &memberlist.MockTransport{}
		}, ""},
		{"no name", func(c *Config) { c.Name = "" }, "Name"},
		{"no site", func(c *Config) { c.Site = "" }, "Site"},
		{"no gRPC address", func(c *Config) { c.GRPCAddr = "" }, "GRPCAddr"},
		{"gRPC address without host", func(c *Config) { c.GRPCAddr = ":9000" }, "GRPCAddr"},
		{"gRPC port 0", func(c *Config) { c.GRPCAddr = "h:0" }, "GRPCAddr"},
		{"bad HTTP address", func(c *Config) { c.HTTPAddr = "h:http" }, "HTTPAddr"},
		{"bad bind address", func(c *Config) { c.BindAddr = "7946" }, "BindAddr"},
		{"bind port too high", func(c *Config) { c.BindAddr = ":70000" }, "BindAddr"},
		{"advertise host name", func(c *Config) { c.AdvertiseAddr = "dp-1:7946" }, "AdvertiseAddr"},
		{"empty join", func(c *Config) { c.Join = []string{"a:1", ""} }, "Join[1]"},
		{"negative rejoin", func(c *Config) { c.RejoinInterval = -1 }, "RejoinInterval"},
		{"key of 10 bytes", func(c *Config) { c.SecretKey = make([]byte, 10) }, "SecretKey"},
		{"tiny packets", func(c *Config) {
			c.Memberlist = memberlist.DefaultLANConfig()
			c.Memberlist.UDPBufferSize = 300
		}, "UDPBufferSize"},
		{"metadata too big", func(c *Config) { c.Site = strings.Repeat("s", 600) }, "metadata"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			c := valid()
			tt.mod(&c)
			err := c.Validate()
			if tt.wantErr == "" {
				if err != nil {
					t.Fatalf("Validate: %v", err)
				}
				return
			}
			if !errors.Is(err, ErrInvalidConfig) || !strings.Contains(err.Error(), tt.wantErr) {
				t.Fatalf("Validate = %v, want ErrInvalidConfig naming %s", err, tt.wantErr)
			}
		})
	}
	if _, err := New(Config{}); !errors.Is(err, ErrInvalidConfig) {
		t.Errorf("New(Config{}) = %v, want ErrInvalidConfig", err)
	}
}
