import LiveRoomMessages
import LiveRoomRPC
import NIOCore

/// gRPC's interop test service (`liveroom.testing.v1.TestService`), served by liveroomd only
/// with `--enable-test-service`, for integration tests and benchmarks.
public enum InteropService {
    public static func register(in registry: inout ServiceRegistry) {
        registry.unary(TestService.emptyCall) { _, _ in Empty() }

        registry.unary(TestService.unaryCall) { request, context in
            context.setInitialMetadata(echoed(context.metadata, "x-grpc-test-echo-initial"))
            context.setTrailers(echoed(context.metadata, "x-grpc-test-echo-trailing-bin"))
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
            response.aggregatedPayloadSize = Int32(total)
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
            context.setInitialMetadata(echoed(context.metadata, "x-grpc-test-echo-initial"))
            context.setTrailers(echoed(context.metadata, "x-grpc-test-echo-trailing-bin"))
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

    private static func echoed(_ metadata: Metadata, _ key: String) -> Metadata {
        guard let v = metadata[key] else { return Metadata() }
        return [key: v]
    }

    private static func zeros(_ n: Int) -> ByteBuffer {
        ByteBuffer(repeating: 0, count: max(0, n))
    }
}
