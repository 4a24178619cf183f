// The Phoenix user API as the console uses it: the token (kept in sessionStorage,
// so it is gone with the tab), requests with problem+json errors, and the types of
// what the API answers (phoenix_wire's views, in their JSON shape).

const TOKEN_KEY = "phoenix.token";

export function token(): string | null {
  return sessionStorage.getItem(TOKEN_KEY);
}

export function setToken(value: string | null) {
  if (value) sessionStorage.setItem(TOKEN_KEY, value);
  else sessionStorage.removeItem(TOKEN_KEY);
}

/** A refusal or failure, with the API's own words. */
export class ApiError extends Error {
  constructor(
    readonly status: number,
    readonly title: string,
    readonly detail: string,
    readonly field?: string,
  ) {
    super(`${status} ${title}: ${detail}`);
  }
}

export async function request<T>(method: string, path: string, body?: unknown): Promise<T> {
  const headers: Record<string, string> = { accept: "application/json" };
  const t = token();
  if (t) headers.authorization = `Bearer ${t}`;
  if (body !== undefined) headers["content-type"] = "application/json";
  let response: Response;
  try {
    response = await fetch(path, {
      method,
      headers,
      body: body === undefined ? undefined : JSON.stringify(body),
    });
  } catch (err) {
    throw new ApiError(0, "Unreachable", `the API did not answer: ${String(err)}`);
  }
  const text = await response.text();
  if (!response.ok) {
    let problem: { title?: string; detail?: string; field?: string } = {};
    try {
      problem = JSON.parse(text);
    } catch {
      problem = { detail: text.slice(0, 500) };
    }
    throw new ApiError(
      response.status,
      problem.title ?? response.statusText,
      problem.detail ?? "(no detail)",
      problem.field,
    );
  }
  return (text ? JSON.parse(text) : undefined) as T;
}

export const get = <T>(path: string) => request<T>("GET", path);
export const post = <T>(path: string) => request<T>("POST", path);

export interface List<T> {
  items: T[];
}

export type Role = "viewer" | "operator" | "admin";

export interface Whoami {
  role: Role;
  /** May change experiments, deployments and load. */
  canOperate: boolean;
  /** A host silent longer than this is lost. */
  hostGraceSeconds: number;
  authDisabled?: boolean;
}

export type Phase =
  | "pending"
  | "deploying"
  | "running"
  | "analyzing"
  | "completed"
  | "failed"
  | "stopped"
  | "promoted"
  | "rolled-back";

export const TERMINAL: Phase[] = ["completed", "failed", "stopped", "promoted", "rolled-back"];

export interface PipelineRef {
  pipeline: string;
  vars?: Record<string, string>;
}

export interface Experiment {
  name: string;
  labels: Record<string, string>;
  spec: {
    hosts: { selector?: Record<string, string>; names?: string[] };
    baseline: PipelineRef;
    candidate: PipelineRef;
    warmup: string;
    duration: string;
    criticalProcesses?: string[];
    criteria: Record<string, number>;
    promotion: string;
  };
  phase: Phase;
  reason?: string | null;
  targetHosts: string[];
  createdAt: string;
  updatedAt: string;
  phaseChangedAt: string;
}

export interface ExperimentEvent {
  id: number;
  experiment: string;
  fromPhase: Phase | null;
  toPhase: Phase;
  reason: string;
  at: string;
}

export type Verdict = "pass" | "fail" | "inconclusive";

export interface VariantKpis {
  series: number;
  datapointsPerMinute: number;
  monthlyCost: number;
  cpuCores: number | null;
  rssMib: number | null;
  criticalProcesses: string[];
}

export type TestMethod = "signed-rank-hosts" | "signed-rank-windows" | "mann-whitney";

/** The test behind a resource criterion (wire/src/report.rs `ResourceTest`); reports
 * written before paired tests hold none of the optional fields. */
export interface ResourceTest {
  baselineSamples: number;
  candidateSamples: number;
  pValue: number;
  pOverAllowance: number | null;
  effectSize: number;
  shift: number;
  allowance: number;
  method?: TestMethod;
  why?: string;
  hosts?: number;
  pairs?: number;
  ciLow?: number;
  ciHigh?: number;
  confidence?: number;
  pAdjusted?: number;
  spacing?: number;
}

export interface ErrorControl {
  method: string;
  alpha: number;
  tested: string[];
  summary: string;
}

/** Fidelity on one host or all, in percent (wire `FidelityKpis`). */
export interface FidelityKpis {
  cpuTopKRecall: number | null;
  memoryTopKRecall: number | null;
  cpuTotalError: number | null;
  memoryTotalError: number | null;
  steps: number;
}

export interface Fidelity {
  topK: number;
  stepSeconds: number;
  freshnessSeconds: number;
  overall: FidelityKpis;
  hosts: Record<string, FidelityKpis>;
}

/** [unix seconds, value] */
export type Point = [number, number];

export interface VariantEvidence {
  series: Point[];
  datapointsPerMinute: Point[];
  cpuCores: Record<string, Point[]>;
  rssMib: Record<string, Point[]>;
}

export interface Evidence {
  stepSeconds: number;
  maxPoints: number;
  baseline: VariantEvidence;
  candidate: VariantEvidence;
}

export interface Report {
  experiment: string;
  windowStart: string;
  windowEnd: string;
  analyzedAt: string;
  verdict: Verdict;
  criteria: { criterion: string; outcome: string; reason: string }[];
  baseline: VariantKpis;
  candidate: VariantKpis;
  hosts: Record<string, { baseline: VariantKpis; candidate: VariantKpis }>;
  cpuTest: ResourceTest | null;
  memoryTest: ResourceTest | null;
  pricePerMillionDpm: number;
  errorControl?: ErrorControl | null;
  fidelity?: Fidelity | null;
  evidence?: Evidence | null;
}

export interface CollectorStatus {
  collectorId: string;
  owner: string;
  variant: string;
  pipeline: string;
  configHash: string;
  pid?: number | null;
  health: string;
  restarts: number;
  cpuSeconds: number;
  rssBytes: number;
  lastError?: string;
}

export interface Host {
  hostId: string;
  labels: Record<string, string>;
  agentVersion: string;
  state: "ready" | "lost";
  lastSeen: string;
  collectors: CollectorStatus[];
}

export interface AgentTask {
  id: number;
  host: string;
  kind: string;
  action: string;
  unit: string;
  experiment?: string;
  deployment?: string;
  loadsim?: string;
  status: string;
  attempts: number;
  error?: string;
  createdAt: string;
  updatedAt: string;
}

export interface Template {
  name: string;
  description: string;
  builtin: boolean;
  variables: { name: string; default: string }[];
  config: string;
  updatedAt: string;
}

export interface DeploymentSpec {
  hosts: { selector?: Record<string, string>; names?: string[] };
  pipeline: string;
  vars?: Record<string, string>;
  criticalProcesses?: string[];
}

export interface Deployment {
  name: string;
  spec: DeploymentSpec;
  revision: number;
  promotedFrom?: string | null;
  change: string;
  createdAt: string;
  updatedAt: string;
  hosts: { hostId: string; collector?: CollectorStatus | null; shadowedBy?: string }[];
  revisions?: {
    revision: number;
    spec: DeploymentSpec;
    promotedFrom?: string | null;
    change: string;
    createdAt: string;
    rolledBackAt?: string | null;
  }[];
}

export interface PromotionResult {
  experiment: Experiment;
  deployment: Deployment | null;
}

/** One message of `/api/v1/events`. */
export type StreamEvent =
  | ({ kind: "experiment" } & ExperimentEvent)
  | { kind: "host"; host: string; change: string; agentVersion: string; at: string }
  | {
      kind: "task";
      id: number;
      host: string;
      unit: string;
      experiment?: string | null;
      taskKind: string;
      action: string;
      status: string;
      attempts: number;
      error?: string | null;
      at: string;
    };
