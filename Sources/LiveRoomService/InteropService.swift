import LiveRoomMessages
import LiveRoomRPC
import NIOCore

/// gRPC's interop test service (`liveroom.testing.v1.TestService`), served by liveroomd only
/// with `--enable-test-service`, for integration tests and benchmarks.
public enum InteropService {
    public static func register(in registry: inout ServiceRegistry) {
        registry.unary(TestService.emptyCall) { _, _ in Empty() }

        registry.unary(TestService.unaryCall) { request, context in
            echoMetadata(context)
            if request.sleepMs > 0 { try await Task.sleep(for: .milliseconds(request.sleepMs)) }
            try check(request.responseStatus)
            var r = SimpleResponse()
            r.payload = zeros(Int(request.responseSize))
            return r
        }

        registry.clientStreaming(TestService.streamingInputCall) { requests, _ in
            var total = 0
            for try await r in requests { total += r.payload.readableBytes }
            var response = StreamingInputCallResponse()
            response.aggregatedPayloadSize = Int32(clamping: total)
            return response
        }

        registry.serverStreaming(TestService.streamingOutputCall) { request, sender, _ in
            for p in request.responseParameters {
                if p.intervalMs > 0 { try await Task.sleep(for: .milliseconds(p.intervalMs)) }
                var r = StreamingOutputCallResponse()
                r.payload = zeros(Int(p.size))
                try await sender.send(r)
            }
            try check(request.responseStatus)
        }

        registry.bidirectional(TestService.fullDuplexCall) { requests, sender, context in
            echoMetadata(context)
            for try await request in requests {
                try check(request.responseStatus)
                for p in request.responseParameters {
                    if p.intervalMs > 0 { try await Task.sleep(for: .milliseconds(p.intervalMs)) }
                    var r = StreamingOutputCallResponse()
                    r.payload = zeros(Int(p.size))
                    try await sender.send(r)
                }
            }
        }
    }

    private static func check(_ status: EchoStatus?) throws {
        guard let status, status.code != 0 else { return }
        throw RPCStatus(RPCStatus.Code(rawValue: status.code), status.message)
    }

    /// Echoes the interop cases' metadata keys, the initial one before the first response and
    /// the trailing one with the status; a call without them sets nothing.
    private static func echoMetadata(_ context: CallContext) {
        if let v = context.metadata["x-grpc-test-echo-initial"] { context.setInitialMetadata(["x-grpc-test-echo-initial": v]) }
        if let v = context.metadata["x-grpc-test-echo-trailing-bin"] { context.setTrailers(["x-grpc-test-echo-trailing-bin": v]) }
    }

    /// Zeros are read-only: payloads up to 64 KiB are slices of one shared block, not new buffers.
    private static let zeroBlock = ByteBuffer(repeating: 0, count: 64 * 1024)

    private static func zeros(_ n: Int) -> ByteBuffer {
        guard n > 0 else { return ByteBuffer() }
        return zeroBlock.getSlice(at: 0, length: n) ?? ByteBuffer(repeating: 0, count: n)
    }
}
