// RequestHandler: what a transport hands each request to. dispatch::Dispatcher implements it;
// tests may substitute their own.
//
// Thread-safety: Handle() is called concurrently from every worker thread.
#pragma once

#include <cstddef>
#include <span>

#include "fsserver/dispatch/reply_sink.h"

namespace iomapfs::dispatch {

class RequestHandler {
 public:
  virtual ~RequestHandler() = default;
  // Handles one raw request message and sends its reply (if the opcode has one) to `sink`.
  // Never fails: errors become error replies. `msg` is only valid during the call.
  virtual void Handle(std::span<const std::byte> msg, ReplySink& sink) = 0;
  // The largest request the handler negotiated (header + WRITE/SETXATTR payload); transports
  // size their buffers by it.
  virtual size_t MaxRequestSize() const = 0;
};

}  // namespace iomapfs::dispatch
