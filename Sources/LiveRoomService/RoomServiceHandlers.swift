import Foundation
import LiveRoomDomain
import LiveRoomMessages
import LiveRoomRPC

extension RPCStatus {
    /// The status a domain failure is reported with.
    init(_ error: RoomError) {
        let code: RPCStatus.Code
        switch error.code {
        case .invalidArgument: code = .invalidArgument
        case .notFound: code = .notFound
        case .alreadyExists: code = .alreadyExists
        case .permissionDenied: code = .permissionDenied
        case .failedPrecondition: code = .failedPrecondition
        case .unavailable: code = .unavailable
        case .deadlineExceeded: code = .deadlineExceeded
        case .aborted: code = .aborted
        case .resourceExhausted: code = .resourceExhausted
        case .internal: code = .internal
        }
        self.init(code, error.message)
    }
}

/// Runs a handler body, reporting domain failures with their status.
func domain<T>(_ body: () async throws -> T) async throws -> T {
    do {
        return try await body()
    } catch let error as RoomError {
        throw RPCStatus(error)
    }
}

/// `liveroom.v1.RoomService`.
public enum RoomServiceHandlers {
    static let defaultPageSize = 50
    static let maxPageSize = 1000

    public static func register(_ registry: RoomRegistry, in services: inout ServiceRegistry) {
        services.unary(RoomService.createRoom) { request, context in
            try await domain {
                let (room, created) = try await registry.create(request)
                if created {
                    context.logger.info("room created", metadata: ["room": "\(room.id)", "platform": "\(room.platformId)"])
                }
                var r = CreateRoomResponse()
                r.room = room.message(nowMs: registry.now)
                r.created = created
                return r
            }
        }
        services.unary(RoomService.getRoom) { request, context in
            context.addLogMetadata("room", request.roomId)
            return try await domain {
                var r = GetRoomResponse()
                r.room = try await registry.room(request.roomId).snapshot().message(nowMs: registry.now)
                return r
            }
        }
        services.unary(RoomService.listRooms) { request, _ in
            try await domain {
                guard request.pageSize >= 0 else { throw RoomError(.invalidArgument, "page_size must not be negative") }
                let size = request.pageSize == 0 ? defaultPageSize : min(Int(request.pageSize), maxPageSize)
                var query = RoomQuery(limit: size + 1)
                if request.status != .unspecified { query.status = request.status }
                if !request.platformId.isEmpty { query.platformId = request.platformId }
                if request.kind != .unspecified { query.kind = request.kind }
                if !request.pageToken.isEmpty { query.after = try PageToken.decode(request.pageToken) }
                let rooms = try await registry.list(query)
                var r = ListRoomsResponse()
                let now = registry.now
                r.rooms = rooms.prefix(size).map { $0.message(nowMs: now) }
                if rooms.count > size, let last = rooms.prefix(size).last {
                    r.nextPageToken = PageToken.encode(createdAtMs: last.createdAtMs, id: last.id)
                }
                return r
            }
        }
        services.unary(RoomService.refreshRoom) { request, context in
            context.addLogMetadata("room", request.roomId)
            return try await domain {
                var r = RefreshRoomResponse()
                r.room = try await registry.room(request.roomId).refresh().message(nowMs: registry.now)
                return r
            }
        }
        services.unary(RoomService.rotateKey) { request, context in
            context.addLogMetadata("room", request.roomId)
            return try await domain {
                let room = try await registry.room(request.roomId).rotateKey()
                context.logger.info("stream key rotated", metadata: ["room": "\(room.id)"])
                var r = RotateKeyResponse()
                r.room = room.message(nowMs: registry.now)
                return r
            }
        }
        services.unary(RoomService.closeRoom) { request, context in
            context.addLogMetadata("room", request.roomId)
            return try await domain {
                let room = try await registry.room(request.roomId).close()
                context.logger.info("room closed", metadata: ["room": "\(room.id)"])
                var r = CloseRoomResponse()
                r.room = room.message(nowMs: registry.now)
                return r
            }
        }
        services.unary(RoomService.listPlatforms) { _, _ in
            let platforms = await registry.platformList
            var connectors: [String: PlatformClient] = [:]
            for p in platforms { connectors[p.id] = await registry.connector(for: p.id) }
            let probes = connectors
            let reasons = await withTaskGroup(of: (String, String?).self) { group in
                for (id, c) in probes { group.addTask { (id, await c.probe()) } }
                var out: [String: String?] = [:]
                for await (id, reason) in group { out[id] = reason }
                return out
            }
            var r = ListPlatformsResponse()
            r.platforms = platforms.map { p in
                var m = Platform()
                m.platformId = p.id
                m.displayName = p.displayName
                m.builtin = p.isBuiltin
                m.supportsLive = p.supportsLive
                m.supportsMeeting = p.supportsMeeting
                m.connectorAddress = p.connector
                m.keyTtlMs = p.keyTTLMs
                if p.isBuiltin {
                    m.reachable = true
                } else if let reason = reasons[p.id] {
                    m.reachable = reason == nil
                    m.unreachableReason = reason ?? ""
                }
                return m
            }
            return r
        }
    }
}

/// Opaque page tokens: the last room of a page, base64url.
enum PageToken {
    static func encode(createdAtMs: Int64, id: String) -> String {
        Data("\(createdAtMs):\(id)".utf8).base64EncodedString()
            .replacingOccurrences(of: "+", with: "-").replacingOccurrences(of: "/", with: "_").replacingOccurrences(of: "=", with: "")
    }

    static func decode(_ token: String) throws -> (createdAtMs: Int64, id: String) {
        var b64 = token.replacingOccurrences(of: "-", with: "+").replacingOccurrences(of: "_", with: "/")
        while b64.count % 4 != 0 { b64 += "=" }
        guard let data = Data(base64Encoded: b64), let text = String(data: data, encoding: .utf8),
            let colon = text.firstIndex(of: ":"), let at = Int64(text[..<colon])
        else { throw RoomError(.invalidArgument, "page_token is not one this server gave out") }
        return (at, String(text[text.index(after: colon)...]))
    }
}
