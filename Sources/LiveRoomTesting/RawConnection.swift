import LiveRoomRPC
import NIOConcurrencyHelpers
import NIOCore
import NIOPosix

/// A plain byte-stream connection, for sending malformed input and reading what comes back.
public struct RawConnection: Sendable {
    let channel: NIOAsyncChannel<ByteBuffer, ByteBuffer>

    public static func connect(_ endpoint: Endpoint) async throws -> RawConnection {
        let bootstrap = ClientBootstrap(group: MultiThreadedEventLoopGroup.singleton)
        let initializer: @Sendable (Channel) -> EventLoopFuture<NIOAsyncChannel<ByteBuffer, ByteBuffer>> = { channel in
            channel.eventLoop.makeCompletedFuture { try NIOAsyncChannel(wrappingChannelSynchronously: channel) }
        }
        switch endpoint {
        case .unix(let path):
            return RawConnection(channel: try await bootstrap.connect(unixDomainSocketPath: path, channelInitializer: initializer))
        case .tcp(let host, let port):
            return RawConnection(channel: try await bootstrap.connect(host: host, port: port, channelInitializer: initializer))
        }
    }

    /// Writes `bytes` (nothing when empty: only reads), then reads until the peer closes or
    /// `timeout` passes. Returns what was read and whether the peer closed the connection.
    public func exchange(_ bytes: [UInt8], timeout: Duration = .seconds(5)) async throws -> (received: [UInt8], closed: Bool) {
        try await channel.executeThenClose { inbound, outbound in
            if !bytes.isEmpty { try await outbound.write(ByteBuffer(bytes: bytes)) }
            let got = NIOLockedValueBox<[UInt8]>([])
            let closed = try await withThrowingTaskGroup(of: Bool.self) { group in
                group.addTask {
                    do {
                        for try await chunk in inbound { got.withLockedValue { $0 += chunk.readableBytesView } }
                    } catch {}
                    return true
                }
                group.addTask {
                    try await Task.sleep(for: timeout)
                    return false
                }
                let first = try await group.next()!
                group.cancelAll()
                return first
            }
            return (got.withLockedValue { $0 }, closed)
        }
    }
}

/// Builds frames by hand for malformed-input tests.
public enum RawFrames {
    public static func frame(_ type: UInt8, flags: UInt8 = 0, callID: UInt32, payload: [UInt8], declaredLength: UInt32? = nil) -> [UInt8] {
        var b = ByteBuffer()
        b.writeInteger(declaredLength ?? UInt32(6 + payload.count))
        b.writeInteger(type)
        b.writeInteger(flags)
        b.writeInteger(callID)
        b.writeBytes(payload)
        return Array(b.readableBytesView)
    }

    /// Splits a byte stream into (type, call id, payload) frames.
    public static func parse(_ bytes: [UInt8]) -> [(type: UInt8, callID: UInt32, payload: [UInt8])] {
        var b = ByteBuffer(bytes: bytes)
        var out: [(UInt8, UInt32, [UInt8])] = []
        while let len = b.readInteger(as: UInt32.self), let t = b.readInteger(as: UInt8.self), b.readInteger(as: UInt8.self) != nil,
            let id = b.readInteger(as: UInt32.self), let p = b.readBytes(length: Int(len) - 6)
        {
            out.append((t, id, p))
        }
        return out
    }
}
