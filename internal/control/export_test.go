package control

import "crypto/tls"

// TLSConfigOf returns the gRPC server's TLS config (for the profile test).
func TLSConfigOf(s *Server) *tls.Config { return s.tlsConfig }
