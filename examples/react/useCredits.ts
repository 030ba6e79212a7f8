// useCredits: the signed-in user's balance and last transactions, for a React app served
// behind a proxy that fronts quotagate (examples/nginx, examples/traefik, examples/envoy).
//
// The proxy maps GET /api/credits to quotagate's GET /v1/me, adding the hook key and the
// account id of whoever it authenticated: the browser never holds a quotagate key and cannot
// ask for anyone else's account. Unlike a naive version, this one checks the
// HTTP status, reports errors instead of showing an empty balance, never sets state after
// unmount, and never shows a cached balance.
//
//   const { credits, loading, error, refetch } = useCredits();
//   if (error?.outOfCredits) ...      // a 402 from a charged request, see isOutOfCredits()
//   <span>{credits?.available ?? "…"} credits</span>
//   await fetch("/api/chat/send", ...); await refetch();   // after something that costs credits

import { useCallback, useEffect, useRef, useState } from "react";

export type TransactionType = "earn" | "spend" | "refund" | "grant" | "expire" | "adjust";

/** One ledger entry, newest first in `recent_transactions`. */
export interface Transaction {
  id: string;
  account_id: string;
  /** Signed: spends and expiries are negative. */
  amount: number;
  type: TransactionType;
  resource: string | null;
  units: number | null;
  description: string | null;
  metadata: Record<string, unknown> | null;
  /** RFC 3339, UTC. */
  created_at: string;
  balance_after: number | null;
  /** Charged, not yet copied to the ledger database (it will be, within seconds). */
  pending: boolean;
  /** On a pool's spend for a member's charge: the member it paid for; null otherwise. */
  member_id: string | null;
}

/** The answer of GET /v1/me (the same as GET /v1/accounts/{id}). */
export interface Credits {
  account_id: string;
  tier: string;
  status: "active" | "banned";
  balance: number;
  /** Set aside by open holds. */
  reserved: number;
  /** What can be spent now: balance - reserved + overdraft_limit. */
  available: number;
  overdraft_limit: number;
  last_reset_at: string | null;
  recent_transactions: Transaction[];
  /** The balance's two buckets: spends take the monthly credits first. */
  buckets: Buckets;
  /** Open holds, the soonest to expire first; their sum is `reserved`. */
  holds: OpenHold[];
  /** The grants holding credits, in the order spends take from them (docs/grants.md). */
  grants: Grant[];
  /** When the next grant expires (RFC 3339), or null when none does. */
  next_expiry: string | null;
  /** For a member of a pool (an account "<pool>~<name>", docs/pools.md); null otherwise. */
  membership: Membership | null;
}

/** A member's place in its pool: the pool pays its charges, within its limit per period. */
export interface Membership {
  pool_id: string;
  /** The most credits the pool pays for it per period of the pool; null: no limit. */
  member_limit: number | null;
  /** Its own credits go first, the pool pays the rest. */
  own_credits_first: boolean;
  /** What the pool paid for it in the pool's current period. */
  used: number;
}

export type GrantSource = "renewal" | "purchase" | "promotion" | "refund" | "adjustment";

/** "monthly" and "purchased" are the standing grants; the others are explicit ones. */
export interface Grant {
  id: string;
  source: GrantSource;
  /** 0..100, lower is spent first. */
  priority: number;
  amount: number;
  remaining: number;
  /** RFC 3339, or null: never expires. */
  expires_at: string | null;
  /** Null for the standing grants. */
  created_at: string | null;
}

export interface Buckets {
  monthly: number;
  purchased: number;
}

export interface OpenHold {
  hold_id: string;
  amount: number;
  expires_at: string;
  /** The resource it was priced from; null for a hold of a plain amount. */
  resource: string | null;
  units: number | null;
}

/** quotagate's errors are RFC 9457 problem documents with a stable `code`. */
export interface Problem {
  type: string;
  title: string;
  status: number;
  detail?: string;
  code?: string;
}

export class CreditsError extends Error {
  constructor(
    readonly status: number,
    readonly problem: Problem | null,
  ) {
    super(problem?.detail ?? problem?.title ?? `GET credits failed with HTTP ${status}`);
    this.name = "CreditsError";
  }

  /** The proxy refused a charged request for lack of credits (402 insufficient_credits). */
  get outOfCredits(): boolean {
    return this.status === 402 || this.problem?.code === "insufficient_credits";
  }
}

/** Whether a response from a charged route means "out of credits" (to prompt a top-up). */
export function isOutOfCredits(response: Response): boolean {
  return response.status === 402;
}

/** One read of the account; throws CreditsError on any non-2xx answer. */
export async function fetchCredits(url: string, signal?: AbortSignal): Promise<Credits> {
  const response = await fetch(url, {
    method: "GET",
    headers: { Accept: "application/json" },
    credentials: "same-origin", // the proxy authenticates the user from their cookie or header
    cache: "no-store", // a balance must never come from a cache
    signal,
  });
  if (!response.ok) {
    let problem: Problem | null = null;
    try {
      problem = (await response.json()) as Problem;
    } catch {
      // Not a problem document (a proxy's own error page): the status says enough.
    }
    throw new CreditsError(response.status, problem);
  }
  return (await response.json()) as Credits;
}

export interface UseCredits {
  credits: Credits | null;
  loading: boolean;
  error: CreditsError | Error | null;
  /** Read the account again (after a charged request, say); resolves when done. */
  refetch: () => Promise<void>;
}

export function useCredits(url: string = "/api/credits"): UseCredits {
  const [credits, setCredits] = useState<Credits | null>(null);
  const [loading, setLoading] = useState<boolean>(true);
  const [error, setError] = useState<CreditsError | Error | null>(null);
  // Only the latest read may set state: an older, slower answer must not overwrite it.
  const current = useRef<AbortController | null>(null);

  const refetch = useCallback(async (): Promise<void> => {
    current.current?.abort();
    const controller = new AbortController();
    current.current = controller;
    setLoading(true);
    try {
      const next = await fetchCredits(url, controller.signal);
      if (!controller.signal.aborted) {
        setCredits(next);
        setError(null);
      }
    } catch (caught) {
      if (!controller.signal.aborted) {
        setError(caught instanceof Error ? caught : new Error(String(caught)));
      }
    } finally {
      if (current.current === controller) {
        setLoading(false);
      }
    }
  }, [url]);

  useEffect(() => {
    void refetch();
    return () => current.current?.abort();
  }, [refetch]);

  return { credits, loading, error, refetch };
}
