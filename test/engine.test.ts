import { engineSuite } from './helpers/engine-suite.js';
import { engineFixture } from './helpers/redis.js';

engineSuite('token engine on standalone Redis', () => engineFixture({ label: 'engine' }));
